"""How front ends show and keep results: 8-bit previews, zoom boxes, and what an upscaled picture records.

Rules the notebook app (and any other front end) shares with the library, kept here once:

- :func:`as_8bit` — a picture a screen can show: PIL as is, 16-bit arrays reduced to their top 8 bits;
- :func:`preview_png` — PNG bytes of a picture, scaled down to a preview size (the file stays full size);
- :func:`zoom_box` — the (left, top, right, bottom) fractions of a zoom window kept inside the picture;
- :func:`pixel_box` — the same for a window of whole pixels (a 1:1 or 2:1 crop);
- :func:`upscaled_params` — generation parameters plus how the picture was upscaled (``upscaler``,
  ``upscale_by``, ``upscale_size``), the vocabulary :mod:`pipeline_lib.metadata` writes;
- :func:`save_result` — save a picture with the metadata that belongs to it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import InvalidParameterError

__all__ = ["as_8bit", "preview_png", "zoom_box", "pixel_box", "upscaled_params", "refined_params",
           "save_result"]


def as_8bit(image) -> Image.Image:
    """``image`` (PIL or a uint8/uint16 H×W or H×W×C array) as a PIL image a screen can show.

    16-bit arrays keep their top 8 bits (``v >> 8``: 65535 → 255, 256 → 1), the usual reduction
    for display; PIL images (browsers show 16-bit gray PNGs) and 8-bit arrays pass unchanged.

    >>> as_8bit(np.full((2, 2, 3), 65535, np.uint16)).getpixel((0, 0))
    (255, 255, 255)
    """
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InvalidParameterError(f"a picture to show must be uint8 or uint16, got {arr.dtype}.")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr, "LA") if arr.ndim == 3 and arr.shape[2] == 2 else Image.fromarray(arr)


def preview_png(image, max_side: int | None = None) -> bytes:
    """PNG bytes of ``image`` (see :func:`as_8bit`), scaled down so its long side is at most
    ``max_side`` (None: full size). A browser gets this; the saved file stays full size."""
    pil = as_8bit(image)
    if max_side and max(pil.size) > max_side:
        pil = pil.copy()
        pil.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, "PNG")
    return buf.getvalue()


def zoom_box(x: float, y: float, zoom: float) -> tuple[float, float, float, float]:
    """The window of a ``zoom``× magnification centred on (``x``, ``y``) — fractions of the picture,
    0..1 — moved inward where it would leave the picture, so it always shows ``1/zoom`` of each side.

    >>> zoom_box(0.5, 0.5, 4)
    (0.375, 0.375, 0.625, 0.625)
    >>> zoom_box(0.0, 1.0, 4)
    (0.0, 0.75, 0.25, 1.0)
    """
    if isinstance(zoom, bool) or not isinstance(zoom, (int, float)) or not zoom >= 1:
        raise InvalidParameterError(f"zoom must be a number ≥ 1, got {zoom!r}.")
    half = 0.5 / zoom
    cx = min(max(float(x), half), 1 - half)
    cy = min(max(float(y), half), 1 - half)
    return cx - half, cy - half, cx + half, cy + half


def pixel_box(size: tuple[int, int], x: float, y: float, side: int) -> tuple[float, float, float, float]:
    """The fractions (as :func:`zoom_box`) of a ``side``×``side``-pixel window of a picture of
    ``size``, centred on (``x``, ``y``) and kept inside; narrower where the picture is. Its edges
    fall on whole pixels, so cutting it from two pictures of that size gives the same pixels of each.

    >>> pixel_box((100, 50), 0.0, 0.5, 20)
    (0.0, 0.3, 0.2, 0.7)
    """
    w, h = size
    if not (isinstance(side, int) and side >= 1):
        raise InvalidParameterError(f"the crop side must be a whole number of pixels ≥ 1, got {side!r}.")
    cw, ch = min(side, w), min(side, h)
    left = min(max(round(float(x) * w - cw / 2), 0), w - cw)
    top = min(max(round(float(y) * h - ch / 2), 0), h - ch)
    return left / w, top / h, (left + cw) / w, (top + ch) / h


def upscaled_params(params: dict[str, Any], result) -> dict[str, Any]:
    """Generation ``params`` plus how ``result`` (an :class:`~pipeline_lib.UpscaleResult`) upscaled
    the picture: ``upscaler``, ``upscale_by`` (float factor) and ``upscale_size`` ("WxH")."""
    return dict(params, upscaler=result.model, upscale_by=float(result.scale),
                upscale_size=f"{result.size[0]}x{result.size[1]}")


def refined_params(params: dict[str, Any], refined) -> dict[str, Any]:
    """``params`` plus the ``refine_*`` settings of ``refined`` (the
    :class:`~pipeline_lib.GeneratedImage` :func:`pipeline_lib.refine` returned)."""
    return dict(params, **{k: v for k, v in refined.params.items() if k.startswith("refine_")})


def save_result(path: str | os.PathLike, image, *, generated=None, upscaled=None,
                refined=None) -> Path:
    """Save ``image`` at ``path`` (atomically, never overwriting) with the metadata it earned.

    ``generated`` (a :class:`~pipeline_lib.GeneratedImage`): A1111 ``parameters`` text, with the
    upscale recorded too when ``upscaled`` (an :class:`~pipeline_lib.UpscaleResult`) is given, so
    ``generate(**read_metadata(path))`` makes the un-upscaled picture again. Without ``generated``:
    the source's own text chunks plus the upscaler's (``UpscaleResult.as_metadata()``).
    ``refined`` (what :func:`pipeline_lib.refine` returned) adds its ``refine_*`` settings; for a
    picture that was not generated here its prompt, model and seed stand in for ``generated``'s.
    """
    from .generate import GeneratedImage
    from .images import save_image

    source = generated if generated is not None else refined
    if source is not None:
        params = source.params if upscaled is None else upscaled_params(source.params, upscaled)
        if refined is not None:
            params = refined_params(params, refined)
        return GeneratedImage(image, source.seed, params).save(path)
    meta = upscaled.as_metadata() if upscaled is not None else None
    return save_image(image, path, metadata=meta)
