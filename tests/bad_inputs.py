"""The bad-input corpus: awkward and broken image files, written on demand (nothing committed).

``write_corpus(folder)`` writes every case and returns ``{name: Case}``. Each :class:`Case` says
what a correct front end answers: either an image of ``size`` (after EXIF rotation) and ``mode``
(PIL mode of ``upscale()``'s output for a path input, or ``"numpy16"`` for 16-bit colour), or an
error of type ``error`` whose message contains ``match``. Sizes assume ×``SCALE``.
"""
from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SCALE = 2


@dataclass(frozen=True)
class Case:
    name: str
    size: tuple[int, int] | None = None  # expected output (w, h) at ×SCALE
    mode: str | None = None  # PIL mode of the output ("numpy16": 16-bit colour array)
    alpha: bool = False  # the output must keep a real (non-constant) alpha channel
    error: str | None = None  # "read" (ImageReadError) or "too_large" (ImageTooLargeError)
    match: str | None = None  # regex the error message must contain
    note: str = ""


def _gradient(w: int, h: int) -> np.ndarray:
    """An RGB test card: red rises left→right, green top→bottom, so orientation is checkable."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.dstack([x, y, np.full_like(x, 96)]).round().astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares ``width``×``height`` RGB pixels (IDAT holds one row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 64)))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def write_corpus(folder: str | Path) -> dict[str, Case]:
    """Write every bad/awkward input into ``folder``; return the cases by file name."""
    import cv2

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    card = Image.fromarray(_gradient(24, 16))  # 24×16 RGB
    files: dict[str, bytes] = {}
    cases: list[Case] = []

    def add(name: str, data: bytes, **expect) -> None:
        files[name] = data
        cases.append(Case(name, **expect))

    s = SCALE
    add("empty.png", b"", error="read", match="empty")
    png = _encode(card, "PNG")
    add("truncated.png", png[: len(png) // 2], error="read", match="damaged or truncated")
    jpg = _encode(card, "JPEG", quality=95)
    add("truncated_jpeg.jpg", jpg[: len(jpg) // 2], error="read", match="damaged or truncated")
    add("text.png", b"this is a text file, not a picture\n", error="read", match="not an image")
    add("html.jpg", b"<!doctype html><html><body>404</body></html>", error="read",
        match="not an image")
    add("cmyk.jpg", _encode(card.convert("CMYK"), "JPEG", quality=95), size=(24 * s, 16 * s),
        mode="RGB")
    pal = card.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0  # palette index 0 fully transparent
    add("palette_transparent.png", _encode(pal, "PNG", transparency=0), size=(24 * s, 16 * s),
        mode="RGBA", alpha=True)
    la = Image.merge("LA", [card.convert("L"), Image.fromarray(_gradient(24, 16)[..., 0])])
    add("gray_alpha.png", _encode(la, "PNG"), size=(24 * s, 16 * s), mode="LA", alpha=True)
    g16 = (np.asarray(card.convert("L")).astype(np.uint16) * 257 + 3)
    add("gray16.png", _encode(Image.fromarray(g16), "PNG"), size=(24 * s, 16 * s), mode="I;16")
    rgb16 = _gradient(24, 16).astype(np.uint16) * 257
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert ok
    add("rgb16.png", buf.tobytes(), size=(24 * s, 16 * s), mode="numpy16")
    add("truncated_rgb16.png", buf.tobytes()[: len(buf) // 2], error="read",
        match="damaged or truncated|could not decode")
    add("bilevel.png", _encode(card.convert("1"), "PNG"), size=(24 * s, 16 * s), mode="L")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24×16; shown rotated 90° clockwise, i.e. 16×24
    add("exif_rotated.jpg", _encode(card, "JPEG", quality=95, exif=exif), size=(16 * s, 24 * s),
        mode="RGB", note="orientation applied")
    add("one_by_one.png", _encode(Image.new("RGB", (1, 1), (200, 40, 10)), "PNG"),
        size=(1 * s, 1 * s), mode="RGB")
    add("one_by_n.png", _encode(card.resize((1, 37)), "PNG"), size=(1 * s, 37 * s), mode="RGB")
    add("n_by_one.png", _encode(card.resize((37, 1)), "PNG"), size=(37 * s, 1 * s), mode="RGB")
    add("bomb_huge.png", bomb_png(100_000, 100_000), error="too_large", match="100,000|pixels")
    add("bomb_mid.png", bomb_png(9_000, 9_000), error="too_large",
        match="81,000,000 pixels exceeds the limit")
    frames = [card, card.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    add("animated.gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                duration=100, loop=0), error="read", match="animated")
    add("animated_apng.png", _encode(frames[0], "PNG", save_all=True, append_images=frames[1:],
                                duration=100), error="read", match="animated")
    add("png_named.jpg", png, size=(24 * s, 16 * s), mode="RGB", note="content wins over suffix")
    for name, data in files.items():
        (root / name).write_bytes(data)
    return {c.name: c for c in cases}
