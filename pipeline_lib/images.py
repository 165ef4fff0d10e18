"""Reading and writing images: modes, EXIF orientation, 16-bit, size limits, atomic saves.

Nothing here knows about models. Inside the library an image is an ``H×W×C`` numpy array
(``uint8`` or ``uint16``, C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) plus an :class:`ImageMeta`
that remembers what the caller handed in, so results go back in the same form.
"""
from __future__ import annotations

import io
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import config
from .errors import ImageReadError, ImageTooLargeError, InvalidParameterError
from .outputs import atomic_write, refuse_existing
from .validation import check_int

__all__ = ["DEFAULT_MAX_INPUT_PIXELS", "max_input_pixels", "ImageMeta", "ImageInput", "read_image",
           "to_output", "encode_image", "save_image"]

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Inputs above this many pixels are refused before decoding (decompression-bomb guard).
#: Override with ``PIPELINE_LIB_MAX_INPUT_PIXELS`` or the ``max_pixels`` argument.
DEFAULT_MAX_INPUT_PIXELS = config.SETTINGS["PIPELINE_LIB_MAX_INPUT_PIXELS"].default


def max_input_pixels() -> int:
    return config.get("PIPELINE_LIB_MAX_INPUT_PIXELS")


@dataclass
class ImageMeta:
    """How an input arrived, so the output can leave the same way."""

    kind: str  # "pil" or "numpy"
    channels: int
    dtype: np.dtype
    pil_mode: str | None = None  # mode of the PIL image handed back
    squeeze: bool = False  # numpy input was H×W (no channel axis)
    source: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


_CONVERT = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB",
            "RGBX": "RGB", "RGBa": "RGBA", "La": "LA", "PA": "RGBA"}
_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _pil_to_array(img: Image.Image, source: str | None) -> tuple[np.ndarray, ImageMeta]:
    mode = img.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info or img.palette and img.palette.mode == "RGBA" else "RGB"
        img = img.convert(mode)
    elif mode in _CONVERT:
        mode = _CONVERT[mode]
        img = img.convert(mode)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise ImageReadError(f"{source or 'image'}: 32-bit integer pixels outside 0..65535 "
                                     "are not supported; convert it to 16-bit first.")
            arr = arr.astype(np.uint16)
        return arr[..., None], ImageMeta("pil", 1, np.dtype(np.uint16), "I;16", source=source)
    if mode not in _CHANNELS:
        raise ImageReadError(f"{source or 'image'}: pixel mode {img.mode!r} is not supported; "
                             "use an RGB, RGBA, gray or 16-bit image.")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr, ImageMeta("pil", _CHANNELS[mode], np.dtype(np.uint8), mode, source=source)


def _from_numpy(arr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
    if arr.dtype not in (np.uint8, np.uint16):
        raise InvalidParameterError(
            f"numpy images must be uint8 or uint16, got {arr.dtype}; for floats in 0..1 pass "
            "(arr * 255).round().astype(np.uint8) or the uint16 equivalent.")
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise InvalidParameterError(
            f"numpy images must be H×W or H×W×C with C in 1..4 (gray, gray+alpha, RGB, RGBA); "
            f"got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidParameterError(f"image has no pixels (shape {arr.shape}).")
    return arr, ImageMeta("numpy", arr.shape[2], arr.dtype, squeeze=squeeze)


def _png_is_16bit_color(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    # IHDR: bit depth at byte 24, colour type at 25 (2 = RGB, 6 = RGBA)
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def read_image(src: ImageInput, max_pixels: int | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Decode ``src`` into an ``H×W×C`` array and its :class:`ImageMeta`.

    Paths get their EXIF orientation applied; 16-bit PNGs stay 16-bit. Raises
    :class:`ImageReadError` (naming the file) for anything that is not a readable still image and
    :class:`ImageTooLargeError` past ``max_pixels`` before any pixel is decoded.

    >>> arr, meta = read_image("assets/astronaut.png")
    >>> arr.shape, meta.kind
    ((512, 512, 3), 'pil')
    """
    limit = max_input_pixels() if max_pixels is None else check_int(max_pixels, "max_pixels", 1)
    if isinstance(src, np.ndarray):
        arr, meta = _from_numpy(src)
        _check_pixels(arr.shape[1], arr.shape[0], limit, "array")
        return arr, meta
    if isinstance(src, Image.Image):
        _check_pixels(src.width, src.height, limit, "image")
        _refuse_animation(src, "image")
        return _pil_to_array(src, None)
    if not isinstance(src, (str, os.PathLike)):
        raise InvalidParameterError(
            f"image must be a path, a PIL image or a numpy array, not {type(src).__name__}.")
    path = Path(src)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes).")
    try:
        with Image.open(path) as img:
            _check_pixels(img.width, img.height, limit, str(path))
            _refuse_animation(img, str(path))
            if img.format == "PNG" and _png_is_16bit_color(path):
                arr = _read_16bit_color(path)
                return arr, ImageMeta("numpy", arr.shape[2], np.dtype(np.uint16), source=str(path))
            img.load()
            img = ImageOps.exif_transpose(img)
            arr, meta = _pil_to_array(img, str(path))
            meta.info = {k: v for k, v in img.info.items() if isinstance(v, str)}
            return arr, meta
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file Pillow can read (wrong extension, or "
                             "another kind of file).") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (PIL.Image.MAX_IMAGE_PIXELS) fired before ours could: same refusal,
        # before decoding, but say which knobs apply.
        raise ImageTooLargeError(
            f"{path}: declares more pixels than Pillow's decompression-bomb limit ({exc}); refused "
            f"before decoding (pipeline_lib's limit is {limit:,}). If the file is trusted, raise "
            "PIL.Image.MAX_IMAGE_PIXELS and max_pixels / PIPELINE_LIB_MAX_INPUT_PIXELS.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, (ImageReadError, InvalidParameterError)):
            raise
        raise ImageReadError(f"{path}: the image data is damaged or truncated ({exc}).") from None


def _check_pixels(w: int, h: int, limit: int, name: str) -> None:
    if w * h > limit:
        raise ImageTooLargeError(
            f"{name}: {w}×{h} = {w * h:,} pixels exceeds the limit of {limit:,}; raise it with "
            "max_pixels=... or PIPELINE_LIB_MAX_INPUT_PIXELS if the file is trusted.")


def _refuse_animation(img: Image.Image, name: str) -> None:
    if getattr(img, "n_frames", 1) > 1 and img.format != "TIFF":
        raise ImageReadError(f"{name}: animated image with {img.n_frames} frames where a still "
                             "image is expected; pass a single frame (PIL: img.seek(i), then "
                             "img.convert('RGB')) or save one frame as PNG.")


def _read_16bit_color(path: Path) -> np.ndarray:
    import cv2  # Pillow reads 16-bit RGB PNGs as 8-bit; OpenCV keeps all 16 bits

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageReadError(f"{path}: the image data is damaged or truncated (OpenCV could not "
                             "decode this 16-bit PNG).")
    code = cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(arr, code)


def to_output(arr: np.ndarray, meta: ImageMeta) -> Image.Image | np.ndarray:
    """Return ``arr`` (H×W×C) in the form described by ``meta`` (PIL image or numpy array)."""
    if meta.kind == "numpy" or (arr.dtype == np.uint16 and arr.shape[2] > 1):
        return arr[..., 0] if meta.squeeze else arr
    if arr.shape[2] == 1:
        return Image.fromarray(arr[..., 0])  # uint8 → "L", uint16 → "I;16"
    return Image.fromarray(arr, "LA") if arr.shape[2] == 2 else Image.fromarray(arr)


# ---------------------------------------------------------------- saving
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
            ".tiff": "TIFF", ".bmp": "BMP"}


def _png_with_text(png: bytes, text: dict[str, str]) -> bytes:
    # Only needed for 16-bit RGB: Pillow cannot write it and OpenCV cannot write text chunks,
    # so the iTXt chunks go in by hand right after IHDR (8-byte signature + 25-byte IHDR chunk).
    chunks = b""
    for key, value in text.items():
        data = key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
        chunks += struct.pack(">I", len(data)) + b"iTXt" + data + struct.pack(
            ">I", zlib.crc32(b"iTXt" + data) & 0xFFFFFFFF)
    return png[:33] + chunks + png[33:]


def encode_image(image: Image.Image | np.ndarray, fmt: str = "PNG",
                 metadata: dict[str, str] | None = None) -> bytes:
    """Encode ``image`` to bytes in ``fmt`` (PNG keeps 16-bit and ``metadata`` text chunks)."""
    _check_metadata(metadata)
    if not isinstance(image, (np.ndarray, Image.Image)):
        raise InvalidParameterError(f"image must be a PIL image or a numpy array, not "
                                    f"{type(image).__name__}.")
    if isinstance(image, np.ndarray):
        arr, _ = _from_numpy(image)
        if arr.dtype == np.uint16 and arr.shape[2] > 1:
            if fmt not in ("PNG", "TIFF"):
                raise InvalidParameterError(f"16-bit colour images can be saved as .png or .tif, "
                                            f"not {fmt}.")
            import cv2

            code = cv2.COLOR_RGBA2BGRA if arr.shape[2] == 4 else cv2.COLOR_RGB2BGR
            ok, buf = cv2.imencode("." + fmt.lower(), cv2.cvtColor(arr, code))
            if not ok:
                raise OSError(f"OpenCV failed to encode a 16-bit {fmt}.")
            data = buf.tobytes()
            return _png_with_text(data, metadata) if metadata and fmt == "PNG" else data
        image = to_output(arr, ImageMeta("pil", arr.shape[2], arr.dtype))
    params: dict[str, Any] = {}
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in (metadata or {}).items():
            info.add_itxt(key, str(value))
        params["pnginfo"] = info
    elif fmt == "JPEG":
        if image.mode in ("RGBA", "LA"):
            raise InvalidParameterError("JPEG cannot store an alpha channel; save as .png or .webp "
                                        "to keep it.")
        if image.mode == "I;16":
            raise InvalidParameterError("JPEG cannot store 16-bit pixels; save as .png or .tif.")
        params["quality"] = 95
    elif fmt == "WEBP":
        params["lossless"] = True
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt, **params)
    except (OSError, ValueError, KeyError) as exc:  # e.g. "cannot write mode P as JPEG"
        raise InvalidParameterError(f"cannot save a {image.mode} image as {fmt} ({exc}); convert "
                                    "it (image.convert('RGB')) or save as .png.") from None
    return buf.getvalue()


def _check_metadata(metadata) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise InvalidParameterError(f"metadata must be a dict of str → str, got "
                                    f"{type(metadata).__name__}.")
    for key in metadata:
        # PNG text keywords: 1-79 Latin-1 characters (PNG spec §11.3.4.2)
        ok = isinstance(key, str) and 1 <= len(key) <= 79
        try:
            ok = ok and bool(key.encode("latin-1"))
        except UnicodeEncodeError:
            ok = False
        if not ok:
            raise InvalidParameterError(f"metadata key {key!r} is not a PNG keyword: use a string of "
                                        "1-79 Latin-1 characters, e.g. 'parameters'.")


def save_image(image: Image.Image | np.ndarray, path: str | os.PathLike, *,
               metadata: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """Save ``image`` atomically; create parent folders; refuse to overwrite unless asked.

    The format follows the suffix (.png, .jpg, .webp, .tif, .bmp). PNGs keep 16-bit pixels and
    ``metadata`` as text chunks (A1111 reads the ``parameters`` key).

    >>> save_image(Image.new("RGB", (8, 8)), "out/x.png", metadata={"parameters": "a cat"})  # doctest: +SKIP
    PosixPath('out/x.png')
    """
    dest = Path(path)
    fmt = _FORMATS.get(dest.suffix.lower())
    if fmt is None:
        raise InvalidParameterError(f"{dest}: unknown image suffix {dest.suffix!r}; use one of "
                                    f"{', '.join(sorted(_FORMATS))}.")
    refuse_existing(dest, overwrite)  # before encoding: a big image costs seconds to encode
    return atomic_write(dest, encode_image(image, fmt, metadata), overwrite=overwrite)
