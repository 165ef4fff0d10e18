"""``upscale()``: any image, any registered or local model, any scale, tiled without seams.

>>> from pipeline_lib import upscale
>>> big = upscale("assets/astronaut.png", size=2048)           # doctest: +SKIP
>>> big.size, big.info["upscaler"]                            # doctest: +SKIP
((2048, 2048), 'realesrgan-x4plus')
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidParameterError, TileOutOfMemoryError
from ..gpu_support import is_missing_kernel_error, note_missing_kernels
from ..heap import reuse_freed_memory
from ..images import ImageInput, read_image, to_output
from ..metadata import carried_over
from ..validation import check_callback
from .backends import Upscaler, get_backend
from .cache import load_upscaler, load_with_fallback, split_options
from .pixels import from_float, resize, to_float
from .progress import ReportingBar
from .registry import MODELS
from .sizing import SizeArg, check_canvas, pass_inputs, passes_needed, target_size
from .targets import DEFAULT_UPSCALER, choose_backend, resolve_model
from .tiling import (DEFAULT_OVERLAP, check_tiling, count_tiles, one_call, run_with_backoff,
                     tile_for_model)

__all__ = ["UpscaleResult", "list_upscalers", "upscale", "FINISH_ON_DEVICE"]

log = logging.getLogger(__name__)

# Device types where an untiled one-pass RGB job is finished on the device (Upscaler.run_whole):
# a GPU then ships uint8 instead of float32 and the host skips the float → uint8 pass, ~70 ms at
# 2048² on 2 cores, more than x4plus itself needs on a fast GPU. On the CPU the two paths cost
# the same, so the general one stays.
FINISH_ON_DEVICE = frozenset({"cuda"})


@dataclass
class UpscaleResult:
    """What ``upscale(..., full_result=True)`` returns: the image and how it was made."""

    image: Any
    model: str
    backend: str
    device: str
    dtype: str
    scale: float
    size: tuple[int, int]
    tile: int
    seconds: float
    source_metadata: dict[str, str] = field(default_factory=dict)
    # set when backend="auto" used another model/backend than the one asked for: why
    fallback: str | None = None

    def as_metadata(self) -> dict[str, str]:
        """Text chunks for the saved file: the source's generation parameters (not its unrelated
        chunks) plus which upscaler made this image (and, after an automatic fallback, why)."""
        meta = {**carried_over(self.source_metadata), "upscaler": self.model,
                "upscale_backend": self.backend, "upscale_by": f"{self.scale:g}"}
        if self.fallback:
            meta["upscale_fallback"] = self.fallback
        return meta


def list_upscalers() -> list[dict[str, Any]]:
    """The registry as rows: name, architecture, native scale, backends, licence, weight source.

    >>> "realesrgan-x4plus" in [r["name"] for r in list_upscalers()]
    True
    """
    return [{"name": s.name, "arch": s.arch, "scale": s.scale, "output_scale": s.output_scale,
             "backends": list(s.backends), "license": s.license, "source": s.source,
             "description": s.description} for s in MODELS.values()]


@dataclass
class _Plan:
    """One upscale job, decided before any pixel moves."""

    up: Upscaler
    run: Callable
    fallback: str | None
    out_size: tuple[int, int]
    passes: int
    tile: int
    overlap: int


def _bind_run(up: Upscaler, run_opts: dict, fallback: str | None):
    """``up.run`` with the per-call options it takes bound; others raise (or, after an automatic
    fallback to another kind of model, are dropped with a warning)."""
    extra = set(run_opts) - set(up.run_options)
    if extra:
        msg = f"{up.name} on {up.backend} takes no {', '.join(sorted(extra))}"
        if fallback is None:
            raise InvalidParameterError(f"{msg}; those options are for diffusion upscalers "
                                        "(sd-x4, sd-x2-latent).")
        log.warning("%s; ignoring them (automatic fallback)", msg)
    kept = {k: v for k, v in run_opts.items() if k in up.run_options}
    return functools.partial(up.run, **kept) if kept else up.run


def _plan(model, w: int, h: int, scale, size, tile, overlap, backend, device, dtype,
          progress: bool, fallback: bool, options: dict) -> _Plan:
    target = resolve_model(DEFAULT_UPSCALER if model is None else model)
    options, run_opts = split_options(options)
    if backend == "auto":  # may substitute a model: result.model/backend and .info say which
        up, fallback = load_with_fallback(target, device, dtype, progress, options,
                                          substitutes=fallback or model is None)
    else:
        up = load_upscaler(target, device, dtype, backend=choose_backend(target, backend),
                           progress=progress, **options)
        fallback = None
    run = _bind_run(up, run_opts, fallback)
    out_size = target_size(w, h, scale=scale, size=size, default_scale=up.default_scale or up.scale)
    check_canvas(w, h, out_size, up.scale)
    # spandrel's advice: a model that must see the whole image runs untiled whatever is asked
    use_tile = tile_for_model(up.tiling, tile, up.default_tile)
    if up.max_tile and (use_tile == 0 or use_tile > up.max_tile):
        if tile is not None:
            log.info("the %s backend tiles at most %d px (asked: %s); using %d", up.backend,
                     up.max_tile, tile or "no tiling", up.max_tile)
        use_tile = up.max_tile
    return _Plan(up, run, fallback, out_size, passes_needed(w, h, out_size, up.scale), use_tile,
                 (up.overlap or DEFAULT_OVERLAP) if overlap is None else overlap)


def _run_passes(up: Upscaler, chw: np.ndarray, passes: int, tile: int, overlap: int, bar,
                run) -> tuple[np.ndarray, int]:
    for i in range(passes):
        sizes = pass_inputs(chw.shape[2], chw.shape[1], up.scale, passes - i)

        def on_retry(new_tile: int, _sizes=sizes) -> None:
            # the pass starts again with smaller tiles: what is left is all of it and the later ones
            bar.total = bar.n + sum(count_tiles(h, w, new_tile, overlap) for w, h in _sizes)
            bar.refresh()

        chw, tile = run_with_backoff(run, chw, up.scale, tile, overlap, up.batch, bar, on_retry)
    return chw, tile


def _whole_on_device(p: _Plan, arr: np.ndarray) -> bool:
    """Whether ``up.run_whole`` can do the job: one untiled pass of an 8-bit RGB image to the
    model's own output size, no per-call options, on a device where finishing there pays."""
    h, w, channels = arr.shape
    up = p.up
    return (up.run_whole is not None and up.device.split(":")[0] in FINISH_ON_DEVICE
            and p.run is up.run and p.passes == 1 and channels == 3 and arr.dtype == np.uint8
            and one_call(h, w, p.tile) and p.out_size == (w * up.scale, h * up.scale))


def _alpha_plane(p: _Plan, arr: np.ndarray, alpha: np.ndarray, used_tile: int, bar
                 ) -> tuple[np.ndarray, int]:
    w, h = p.out_size
    if alpha.min() == alpha.max():  # fully opaque (or uniform): nothing to upscale
        return np.full((1, h, w), alpha.flat[0] / (65535.0 if arr.dtype == np.uint16 else 255.0),
                       np.float32), used_tile
    if not get_backend(p.up.backend).alpha_as_picture:  # a mask is no picture for a sampler
        return resize(to_float(alpha[..., None]), p.out_size), used_tile
    a = np.repeat(to_float(alpha[..., None]), 3, axis=0)
    a, used_tile = _run_passes(p.up, a, p.passes, used_tile, p.overlap, bar, p.run)
    return resize(a, p.out_size).mean(axis=0, keepdims=True), used_tile


def _upscale_planes(p: _Plan, arr: np.ndarray, bar) -> tuple[np.ndarray, int]:
    """The general path: colour (and a varying alpha) through the tiler in float, resized to
    the output size, converted back to ``arr``'s integer type on the host."""
    channels = arr.shape[2]
    color_c = 1 if channels in (1, 2) else 3
    color = to_float(arr[..., :color_c])
    if color_c == 1:
        color = np.repeat(color, 3, axis=0)
    rgb, used_tile = _run_passes(p.up, color, p.passes, p.tile, p.overlap, bar, p.run)
    del color
    rgb = resize(rgb, p.out_size)
    if color_c == 1:
        rgb = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), rgb, axes=1)[None]
    planes = [rgb]
    if channels in (2, 4):
        alpha, used_tile = _alpha_plane(p, arr, arr[..., -1], used_tile, bar)
        planes.append(alpha)
    chw = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=0)
    return from_float(chw, arr.dtype), used_tile


def _total_tiles(p: _Plan, arr: np.ndarray) -> int:
    """Tiles over every pass (each pass reads a bigger image), twice for a varying alpha."""
    h, w, channels = arr.shape
    varying_alpha = channels in (2, 4) and arr[..., -1].min() != arr[..., -1].max()
    planes = 2 if varying_alpha and get_backend(p.up.backend).alpha_as_picture else 1
    sizes = pass_inputs(w, h, p.up.scale, p.passes)
    return planes * sum(count_tiles(ph, pw, p.tile, p.overlap) for pw, ph in sizes)


def _log_plan(p: _Plan, w: int, h: int, total: int) -> None:
    made = (w * p.up.scale ** p.passes, h * p.up.scale ** p.passes)
    finish = "" if made == p.out_size else f", resized to {p.out_size[0]}×{p.out_size[1]}"
    log.info("upscale plan: %d×%d → %s ×%d, %d pass%s → %d×%d%s; %s, %d tile run%s", w, h,
             p.up.name, p.up.scale, p.passes, "" if p.passes == 1 else "es", *made, finish,
             f"tile {p.tile}" if p.tile else "untiled", total, "" if total == 1 else "s")


def _execute(p: _Plan, arr: np.ndarray, progress: bool, on_progress) -> tuple[np.ndarray, int]:
    from tqdm.auto import tqdm

    h, w = arr.shape[:2]
    total = _total_tiles(p, arr)
    _log_plan(p, w, h, total)
    out_arr = None
    # reuse_freed_memory: see pipeline_lib/heap.py (page faults were 10-15 % of a CPU run)
    with reuse_freed_memory(), tqdm(total=total, desc=f"upscale {p.up.name}", unit="tile",
                                    disable=not progress, leave=False) as tq:
        bar = ReportingBar(tq, on_progress)
        if _whole_on_device(p, arr):
            try:
                out_arr, used_tile = p.up.run_whole(to_float(arr)), p.tile
                bar.update(1)
            except TileOutOfMemoryError:
                pass  # the tiled path below halves the tile until it fits
        if out_arr is None:
            out_arr, used_tile = _upscale_planes(p, arr, bar)
        bar.total = bar.n
        bar.refresh()
    return out_arr, used_tile


def upscale(image: ImageInput, model: str | Path | None = None, *, scale: float | None = None,
            size: SizeArg = None, tile: int | None = None, overlap: int | None = None,
            backend: str = "auto", device=None, dtype=None, progress: bool = True,
            full_result: bool = False, on_progress: Callable[[int, int], object] | None = None,
            fallback: bool = False, **options):
    """Upscale ``image`` with ``model`` to ``scale`` × or to ``size``; return the same kind of image.

    ``image`` is a path (EXIF orientation applied), a PIL image, or a uint8/uint16 numpy array
    (H×W or H×W×C). PIL in → PIL out (``.info`` records model, backend and factor); numpy in →
    numpy out with the input's dtype and channels; 16-bit colour stays 16-bit (as numpy).
    RGBA keeps its alpha (upscaled separately); gray stays gray.

    ``scale`` is any factor: the model runs at its native scale (repeatedly if needed) and a
    high-quality resize hits the exact size. ``size`` is ``N`` (long side, aspect kept) or
    ``(w, h)`` (exact). ``tile=None`` chooses a tile size for the device, ``tile=0`` disables
    tiling; out-of-memory halves the tile and retries. ``full_result=True`` returns an
    :class:`UpscaleResult` instead of the bare image. ``on_progress(done, total)`` is called
    after every tile (live progress for front ends; ``total`` counts the tiles of every pass).

    ``model=None`` is the default, ``realesrgan-x4plus``. ``backend="auto"`` runs the model on
    torch when torch imports and its weights are available (packaged, cached or downloadable),
    else on its other backends (ncnn). A model you named is never swapped for another: if it
    cannot run here the error says how to get it (URL, sha256, where to put the file). Only when
    no model was named, or with ``fallback=True``, does auto fall back, in order, to Real-ESRGAN,
    EDSR (cached or downloadable), then the bundled ESPCN / FSRCNN / LapSRN at the model's output
    scale (OpenCV, no torch needed), logging one line that says what it chose and why. What
    actually ran is reported: ``UpscaleResult.model`` / ``.backend`` (and ``.fallback``, the
    reason), and for PIL output ``.info["upscaler"]``, ``["upscale_backend"]`` and
    ``["upscale_fallback"]``.

    Diffusion upscalers (``sd-x4``, ``sd-x2-latent`` or a local diffusers folder of either) take
    per-call ``prompt``, ``negative_prompt``, ``steps``, ``guidance``, ``noise_level`` (x4 only)
    and ``seed`` (default 0, so repeated calls agree) and the load option ``memory`` ('auto',
    'fast', 'balanced', 'low' as for generation): ``upscale(img, "sd-x4", prompt="a fox",
    seed=1)``. Any input size is padded to the model's multiple and cropped back; sd-x4 runs in
    tiles (256² input on a ≥ 10 GB-free GPU, else 128²) blended over the overlap.

    >>> from PIL import Image
    >>> out = upscale(Image.new("RGB", (16, 12)), "realesr-animevideov3", scale=2, progress=False)
    >>> out.size
    (32, 24)
    """
    check_tiling(tile, overlap)
    check_callback(on_progress)
    t0 = time.perf_counter()
    arr, meta = read_image(image)
    h, w = arr.shape[:2]
    p = _plan(model, w, h, scale, size, tile, overlap, backend, device, dtype, progress, fallback,
              options)
    try:
        out_arr, used_tile = _execute(p, arr, progress, on_progress)
    except RuntimeError as exc:  # a GPU this torch has no kernels for, found out at run time
        if device is not None or not p.up.device.startswith("cuda") or not is_missing_kernel_error(exc):
            raise
        note_missing_kernels(p.up.device, exc)
        p = _plan(model, w, h, scale, size, tile, overlap, backend, "cpu", dtype, progress,
                  fallback, options)
        out_arr, used_tile = _execute(p, arr, progress, on_progress)
    result = to_output(out_arr, meta)
    up = p.up
    res = UpscaleResult(result, up.name, up.backend, up.device, up.dtype, p.out_size[0] / w,
                        p.out_size, used_tile, time.perf_counter() - t0, dict(meta.info),
                        p.fallback)
    if hasattr(result, "info"):
        result.info.update(res.as_metadata())
    return res if full_result else result
