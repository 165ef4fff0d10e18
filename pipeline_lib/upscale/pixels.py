"""Pixel conversions around the models: integer H×W×C ↔ float C×H×W in 0..1, and resizing."""
from __future__ import annotations

import numpy as np

__all__ = ["to_float", "from_float", "resize"]


def to_float(arr: np.ndarray) -> np.ndarray:
    """H×W×C integer → C×H×W float32 in 0..1 (one pass, no float64 intermediate)."""
    scale = np.float32(1.0 / (65535.0 if arr.dtype == np.uint16 else 255.0))
    return np.multiply(arr.transpose(2, 0, 1), scale, dtype=np.float32)


def from_float(chw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C×H×W float in 0..1 → H×W×C of ``dtype`` (uint8 or uint16), rounded and clipped."""
    maxv = 65535.0 if dtype == np.uint16 else 255.0
    hwc = chw.transpose(1, 2, 0)
    out = np.empty(hwc.shape, dtype=dtype)
    np.copyto(out, np.clip(hwc * np.float32(maxv) + np.float32(0.5), 0, maxv), casting="unsafe")
    return out


def resize(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """High-quality resize of a float32 C×H×W array to (w, h): area when shrinking, cubic else.

    OpenCV does it when its ``cv2`` imports whole; a missing or half-deleted cv2 (Colab ships
    three OpenCV packages sharing one folder, and ``pip uninstall`` of one of them breaks it)
    falls back to Pillow, so a torch upscale never fails for want of a resize.
    """
    c, h, w = chw.shape
    if (w, h) == size:
        return chw
    shrink = size[0] <= w and size[1] <= h
    cv2 = _working_cv2()
    if cv2 is None:
        return _pillow_resize(chw, size, shrink)
    interp = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    hwc = cv2.resize(np.ascontiguousarray(chw.transpose(1, 2, 0)), size, interpolation=interp)
    if hwc.ndim == 2:
        hwc = hwc[..., None]
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def _working_cv2():
    try:
        import cv2
    except Exception:  # ImportError, or a half-deleted package failing inside its __init__
        return None
    return cv2 if hasattr(cv2, "resize") and hasattr(cv2, "INTER_AREA") else None


def _pillow_resize(chw: np.ndarray, size: tuple[int, int], shrink: bool) -> np.ndarray:
    from PIL import Image

    method = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    planes = [np.asarray(Image.fromarray(plane, mode="F").resize(size, method)) for plane in chw]
    return np.stack(planes).astype(np.float32, copy=False)
