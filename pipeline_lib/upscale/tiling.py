"""A backend-agnostic tiler: overlapping tiles, feathered blending, OOM back-off.

A backend hands in ``fn(batch) -> batch``, a function that upscales float32 ``N×C×h×w`` arrays
(values 0..1) by an integer ``scale``. The tiler cuts the image into equal-size tiles (edge tiles
slide inward so every tile has the same shape, which keeps batching and cuDNN autotuning
effective), runs them, and blends each result into the output canvas with weights that are zero
over the outer quarter of every overlap (pixels that saw the least context), ramp linearly across
the middle half and stay one inside. Image borders are never feathered.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Protocol

import numpy as np

from ..errors import InvalidParameterError, TileOutOfMemoryError, WholeImageOutOfMemoryError

__all__ = ["MIN_TILE", "DEFAULT_OVERLAP", "Progress", "tile_layout",
           "effective_overlap", "default_overlap", "one_call", "count_tiles", "check_tiling",
           "tile_for_model", "run_tiled", "run_with_backoff"]

log = logging.getLogger(__name__)

TileFn = Callable[[np.ndarray], np.ndarray]
MIN_TILE = 16
#: Overlap (input px) for architectures not measured below.
DEFAULT_OVERLAP = 32
# How far (input px) each architecture's output still measurably depends on its input, read off
# bench/seams.py's tile × overlap table: the overlap that keeps tiled output ≥ 50 dB from the
# untiled one on a hard texture (README's tiling table). x4plus's 23 residual-in-residual blocks
# reach far (overlap 32 left 46 dB on gravel at tile 128); the 16-conv SRVGG compact models fall
# off fast (16 px: 63 dB). Keys: spandrel architecture ids and registry architecture names.
_OVERLAP = {"ESRGAN": 64, "RRDBNet": 64, "Compact": 16, "SRVGGNetCompact": 16}


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...



def tile_for_model(tiling: str, tile: int | None, default: int) -> int:
    """The tile to use given spandrel's advice for the model's architecture (``tiling``:
    'supported', 'discouraged' or 'internal') and the caller's ``tile`` (None: ``default``).

    'internal' models (they tile, or need global context, inside) always run whole, a tile
    asked for is ignored with a warning; 'discouraged' ones run whole unless a tile is asked for.

    >>> tile_for_model("internal", 128, 256), tile_for_model("discouraged", None, 256)
    (0, 0)
    >>> tile_for_model("discouraged", 128, 256), tile_for_model("supported", None, 256)
    (128, 256)
    """
    if tiling == "internal":
        if tile:
            log.warning("tile=%d ignored: this model's architecture needs the whole image at "
                        "once (spandrel marks it as tiling internally)", tile)
        return 0
    if tile is None:
        return 0 if tiling == "discouraged" else default
    return tile


def tile_layout(length: int, tile: int, overlap: int) -> tuple[int, list[int]]:
    """Tile size and start offsets covering ``length`` with at least ``overlap`` shared pixels.

    Uses the fewest tiles that fit within ``tile``, then shrinks them to share the length evenly:
    512 px with tile=256, overlap=64 becomes three 214-px tiles rather than three 256-px tiles
    (a third less work), all of one size so they batch.
    """
    if tile >= length:
        return length, [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length - overlap) / n) + overlap
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]
    return size, starts


def effective_overlap(tile: int, overlap: int) -> int:
    """The overlap actually used: less than half the tile (tiles shrunk by OOM back-off keep
    the caller's overlap only while it fits)."""
    return min(overlap, max(tile // 2 - 1, 0))


def default_overlap(architecture: str | None) -> int:
    """The overlap to use when the caller gives none, for ``architecture`` (a spandrel id such
    as 'ESRGAN' or a registry architecture such as 'SRVGGNetCompact'); tiles smaller than twice
    it share less (:func:`effective_overlap`).

    >>> default_overlap("ESRGAN"), default_overlap("SRVGGNetCompact"), default_overlap(None)
    (64, 16, 32)
    """
    return _OVERLAP.get(architecture or "", DEFAULT_OVERLAP)


def one_call(h: int, w: int, tile: int) -> bool:
    """Whether an ``h``×``w`` image runs in one call: no tiling, or a tile covering it."""
    return tile <= 0 or (tile >= h and tile >= w)


def count_tiles(h: int, w: int, tile: int, overlap: int) -> int:
    if one_call(h, w, tile):
        return 1
    overlap = effective_overlap(tile, overlap)
    return len(tile_layout(h, tile, overlap)[1]) * len(tile_layout(w, tile, overlap)[1])


def _ramp(size: int, overlap: int, feather_start: bool, feather_end: bool) -> np.ndarray:
    """Blend weights along one axis of a tile (already at output scale)."""
    pos = np.arange(size, dtype=np.float32) + 0.5
    w = np.ones(size, dtype=np.float32)
    if overlap <= 0:
        return w
    q, h = overlap / 4.0, overlap / 2.0
    if feather_start:
        w = np.minimum(w, np.clip((pos - q) / h, 0.0, 1.0))
    if feather_end:
        w = np.minimum(w, np.clip((size - pos - q) / h, 0.0, 1.0))
    return w


def check_tiling(tile: int | None, overlap: int | None) -> None:
    if tile is not None and (not isinstance(tile, (int, np.integer)) or tile < 0):
        raise InvalidParameterError(f"tile must be an integer ≥ 0 (0 = no tiling), got {tile!r}.")
    if tile and tile < MIN_TILE:
        raise InvalidParameterError(f"tile must be 0 or at least {MIN_TILE} pixels, got {tile}.")
    if overlap is not None and (not isinstance(overlap, (int, np.integer)) or overlap < 0):
        raise InvalidParameterError(f"overlap must be an integer ≥ 0, got {overlap!r}.")
    if tile and overlap is not None and overlap * 2 >= tile:
        raise InvalidParameterError(f"overlap ({overlap}) must be less than half the tile ({tile}).")


def run_tiled(fn: TileFn, image: np.ndarray, scale: int, tile: int, overlap: int,
              batch: int = 1, progress: Progress | None = None) -> np.ndarray:
    """Upscale a ``C×H×W`` float32 image tile by tile; return ``C'×sH×sW`` float32.

    ``tile=0`` (or a tile not smaller than the image) runs the image in one call.
    """
    _, h, w = image.shape
    if one_call(h, w, tile):
        out = fn(image[None])[0]
        if progress is not None:
            progress.update(1)
        return out
    th, ys = tile_layout(h, tile, overlap)
    tw, xs = tile_layout(w, tile, overlap)
    boxes = [(y, x) for y in ys for x in xs]
    out: np.ndarray | None = None
    weight = np.zeros((h * scale, w * scale), dtype=np.float32)
    so = overlap * scale
    for i in range(0, len(boxes), max(1, batch)):
        group = boxes[i:i + max(1, batch)]
        inp = np.stack([image[:, y:y + th, x:x + tw] for y, x in group])
        res = fn(inp)
        if res.shape[-2:] != (th * scale, tw * scale):
            raise RuntimeError(f"backend returned tiles of {res.shape[-2:]}, expected "
                               f"{(th * scale, tw * scale)} (scale {scale}).")
        if out is None:
            out = np.zeros((res.shape[1], h * scale, w * scale), dtype=np.float32)
        for (y, x), tile_out in zip(group, res):
            wy = _ramp(th * scale, so, y > 0, y + th < h)
            wx = _ramp(tw * scale, so, x > 0, x + tw < w)
            w2 = wy[:, None] * wx[None, :]
            ys_, xs_ = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            out[:, ys_, xs_] += tile_out * w2
            weight[ys_, xs_] += w2
        if progress is not None:
            progress.update(len(group))
    assert out is not None
    out /= weight
    return out


def run_with_backoff(fn: TileFn, image: np.ndarray, scale: int, tile: int, overlap: int,
                     batch: int = 1, progress=None, on_retry: Callable[[int], None] | None = None
                     ) -> tuple[np.ndarray, int]:
    """:func:`run_tiled`, halving the tile on :class:`TileOutOfMemoryError` until it fits.

    Returns the output and the tile size that worked. ``on_retry(new_tile)`` lets the caller
    reset its progress bar.
    """
    _, h, w = image.shape
    while True:
        try:
            return run_tiled(fn, image, scale, tile, effective_overlap(tile, overlap),
                             batch, progress), tile
        except WholeImageOutOfMemoryError:
            raise
        except TileOutOfMemoryError:
            current = tile if tile > 0 else max(h, w)
            if batch > 1:
                batch = 1
            elif current <= MIN_TILE:  # a 17..31 px tile still gets one try at MIN_TILE
                raise TileOutOfMemoryError(
                    f"out of memory even with {current}px tiles (the tiler halves the tile down "
                    f"to {MIN_TILE}px): free GPU memory (unload_upscalers(), unload the diffusion "
                    "pipeline), pass a smaller tile=... (CLI: --tile 128) or run on device='cpu' "
                    "(CLI: --device cpu).") from None
            else:
                tile = max(current // 2, MIN_TILE)
            log.warning("out of memory; retrying with tile=%d batch=%d (pass tile=%d to skip this)",
                        tile, batch, tile)
            if on_retry is not None:
                on_retry(tile)
