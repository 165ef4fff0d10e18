"""``upscale()``: any image, any registered or local model, any scale, tiled without seams.

>>> from pipeline_lib import upscale
>>> big = upscale("assets/astronaut.png", size=2048)           # doctest: +SKIP
>>> big.size, big.info["upscaler"]                            # doctest: +SKIP
((2048, 2048), 'realesrgan-x4plus')
"""
from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import (BackendUnavailableError, InvalidParameterError, TileOutOfMemoryError,
                      UnknownModelError, WeightsError)
from ..heap import reuse_freed_memory
from ..images import ImageInput, read_image, to_output
from .backends import BACKENDS, RUN_OPTIONS, Upscaler, backend_module
from .registry import MODELS, ModelSpec, get_spec
from .sizing import SizeArg, check_canvas, passes_needed, target_size
from .tiling import check_tiling, count_tiles, one_call, run_with_backoff

log = logging.getLogger(__name__)

DEFAULT_UPSCALER = "realesrgan-x4plus"
DEFAULT_OVERLAP = 32  # input px shared by neighbouring tiles; ≥ 50 dB vs untiled on x4plus

_CACHE: dict[tuple, Upscaler] = {}
_CACHE_LOCK = threading.Lock()


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
        """Text chunks for the saved file: the source's own (e.g. generation parameters) plus
        which upscaler made this image (and, after an automatic fallback, why)."""
        meta = {**self.source_metadata, "upscaler": self.model, "upscale_backend": self.backend,
                "upscale_factor": f"{self.scale:g}"}
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


def resolve_model(model: str | Path | ModelSpec) -> ModelSpec | str:
    if isinstance(model, ModelSpec):
        return model
    text = str(model)
    if text.startswith(("https://", "http://")):
        return text
    if text.strip().lower() in MODELS:
        return MODELS[text.strip().lower()]
    path = Path(text).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():  # a diffusers upscaler folder
        return str(path.resolve())
    if path.suffix or "/" in text or "\\" in text:
        if not path.is_file():
            raise UnknownModelError(f"model file {path} does not exist; pass a registry name "
                                    f"({', '.join(sorted(MODELS))}) or an existing file / URL.")
        return str(path.resolve())
    return get_spec(text)  # raises with suggestions


def _is_pb(target: ModelSpec | str) -> bool:
    return isinstance(target, str) and target.lower().endswith(".pb")


def choose_backend(target: ModelSpec | str, backend: str) -> str:
    if backend != "auto":
        if backend not in BACKENDS:
            backend_module(backend)  # raises the "unknown backend" error
        if isinstance(target, ModelSpec) and backend not in target.backends:
            raise InvalidParameterError(f"{target.name} runs on backends {', '.join(target.backends)}, "
                                        f"not {backend!r}.")
        return backend
    if isinstance(target, str):  # a local file or URL: the suffix says which runtime reads it
        if target.lower().endswith(".param"):
            return "ncnn"
        if Path(target, "model_index.json").is_file():
            return "diffusion"
        return "opencv" if _is_pb(target) else "torch"
    for name in target.backends:
        if name in BACKENDS:
            return name
    raise InvalidParameterError(f"no installed backend can run {target.name} "
                                f"(it needs one of {', '.join(target.backends)}).")


def _auto_candidates(target: ModelSpec | str) -> list[tuple[ModelSpec | str, str]]:
    """What ``backend="auto"`` tries, in order: the requested model on each of its backends, then
    (for a non-OpenCV model) Real-ESRGAN, EDSR, ESPCN, FSRCNN, LapSRN at the model's output scale.

    ESPCN precedes FSRCNN because it measured higher PSNR at every scale (tests/test_opencv_backend.py).
    """
    if isinstance(target, str):
        return [(target, choose_backend(target, "auto"))]
    cands = [(target, b) for b in target.backends if b in BACKENDS]
    if "opencv" in target.backends:  # an OpenCV model asked for by name: no substitutes
        return cands
    s = round(target.output_scale)
    for name in (f"realesrgan-x{s}plus", f"edsr-x{s}", f"espcn-x{s}", f"fsrcnn-x{s}",
                 f"lapsrn-x{s}", "espcn-x4"):
        spec = MODELS.get(name)
        if spec is not None:
            cands += [(spec, b) for b in spec.backends if b in BACKENDS and (spec, b) not in cands]
    return cands


def _load_auto(target: ModelSpec | str, device, dtype, progress: bool, options: dict
               ) -> tuple[Upscaler, str | None]:
    """Load the first candidate that works; log one line saying what was chosen and why.

    Returns the upscaler and, when it is not the requested model/first backend, the reason.
    Only "cannot be used here" errors (backend not importable, weights missing/unreachable or
    damaged) move on to the next candidate; bad arguments still raise.
    """
    wanted = target.name if isinstance(target, ModelSpec) else target
    failed: list[str] = []
    cands = _auto_candidates(target)
    for cand, backend in cands:
        name = cand.name if isinstance(cand, ModelSpec) else cand
        try:
            up = load_upscaler(cand, device, dtype, backend=backend, progress=progress, **options)
        except (BackendUnavailableError, WeightsError) as exc:
            if len(cands) == 1:  # nothing to fall back to: the original error says most
                raise
            failed.append(f"{name} on {backend}: {str(exc).split('. ')[0]}")
            continue
        if not failed:
            log.info("upscaler auto: %s on %s (requested model; %s imports and its weights are "
                     "available)", name, backend, backend)
            return up, None
        why = f"{'; '.join(failed)}"
        log.warning("upscaler auto: using %s on %s instead of %s, because %s", name, backend,
                    wanted, why)
        return up, f"{name} on {backend} instead of {wanted}: {why}"
    raise BackendUnavailableError(f"no upscaler could be loaded for {wanted}: {'; '.join(failed)}; "
                                  "Install torch, or allow the weight download (unset "
                                  "PIPELINE_LIB_OFFLINE / HF_HUB_OFFLINE).")


def load_upscaler(model: str | Path = DEFAULT_UPSCALER, device=None, dtype=None, *,
                  backend: str = "auto", progress: bool = True, **options) -> Upscaler:
    """Load (once per process) a model by registry name, file path or URL.

    Cached by (backend, model, device, dtype, options): a second call returns the same object
    without touching the disk. ``backend="auto"`` may substitute a model exactly as
    :func:`upscale` does; the returned upscaler's ``name``/``backend`` say what was loaded. :func:`unload_upscalers` frees everything, GPU memory included.

    >>> up = load_upscaler("realesr-animevideov3", device="cpu")
    >>> up.scale, up.backend
    (4, 'torch')
    """
    target = resolve_model(model)
    if backend == "auto":
        return _load_auto(target, device, dtype, progress, options)[0]
    backend = choose_backend(target, backend)  # checks the model runs on it
    key_name = target.name if isinstance(target, ModelSpec) else target
    module = backend_module(backend)  # first, so a missing torch is a BackendUnavailableError
    if device is None and backend in ("torch", "diffusion"):
        from ..devices import resolve_device

        device = str(resolve_device(None))
    key = (backend, key_name, str(device), str(dtype), tuple(sorted(options.items())))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        up = module.load(target, device=device, dtype=dtype, progress=progress,
                                          **options)
        if isinstance(target, ModelSpec):
            up.name = target.name
        _CACHE[key] = up
        log.info("loaded upscaler %s (%s on %s, %s)", up.name, backend, up.device, up.dtype)
        return up


def unload_upscalers() -> None:
    """Drop every cached upscaler and return its memory (GPU memory too)."""
    with _CACHE_LOCK:
        for up in _CACHE.values():
            try:
                up.release()
            except Exception:  # a failing release must not keep other models alive
                log.exception("releasing %s failed", up.name)
        _CACHE.clear()
    gc.collect()


# Device types where an untiled one-pass RGB job is finished on the device (Upscaler.run_whole):
# a GPU then ships uint8 instead of float32 and the host skips the float → uint8 pass, ~70 ms at
# 2048² on 2 cores, more than x4plus itself needs on a fast GPU. On the CPU the two paths cost
# the same, so the general one stays.
FINISH_ON_DEVICE = frozenset({"cuda"})


def _to_float(arr: np.ndarray) -> np.ndarray:
    """H×W×C integer → C×H×W float32 in 0..1 (one pass, no float64 intermediate)."""
    scale = np.float32(1.0 / (65535.0 if arr.dtype == np.uint16 else 255.0))
    return np.multiply(arr.transpose(2, 0, 1), scale, dtype=np.float32)


def _from_float(chw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    maxv = 65535.0 if dtype == np.uint16 else 255.0
    hwc = chw.transpose(1, 2, 0)
    out = np.empty(hwc.shape, dtype=dtype)
    np.copyto(out, np.clip(hwc * np.float32(maxv) + np.float32(0.5), 0, maxv), casting="unsafe")
    return out


def _resize(chw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """High-quality resize of a float32 C×H×W array to (w, h): area when shrinking, cubic else."""
    import cv2

    c, h, w = chw.shape
    if (w, h) == size:
        return chw
    interp = cv2.INTER_AREA if size[0] <= w and size[1] <= h else cv2.INTER_CUBIC
    hwc = cv2.resize(np.ascontiguousarray(chw.transpose(1, 2, 0)), size, interpolation=interp)
    if hwc.ndim == 2:
        hwc = hwc[..., None]
    return np.ascontiguousarray(hwc.transpose(2, 0, 1))


def _split_options(options: dict) -> tuple[dict, dict]:
    """(load options, per-call options): per-call ones (a diffusion upscaler's prompt, seed, ...)
    go to ``Upscaler.run`` and stay out of the load cache key."""
    per_call = frozenset().union(*RUN_OPTIONS.values())
    return ({k: v for k, v in options.items() if k not in per_call},
            {k: v for k, v in options.items() if k in per_call})


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


class ReportingBar:
    """A tqdm bar that also tells ``on_progress(done, total)`` about every update."""

    # A disabled tqdm counts nothing, so the count and total are kept here as well.
    def __init__(self, bar, on_progress: Callable[[int, int], object] | None) -> None:
        self.bar, self.on_progress, self.n, self._total = bar, on_progress, 0, bar.total or 0

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = self.bar.total = value

    def refresh(self) -> None:
        self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)
        if self.on_progress is not None:
            self.on_progress(self.n, max(self._total, self.n))


def _run_passes(up: Upscaler, chw: np.ndarray, passes: int, tile: int, overlap: int, bar,
                run) -> tuple[np.ndarray, int]:
    for i in range(passes):
        remaining = passes - i

        def on_retry(new_tile: int, _chw=chw, _left=remaining) -> None:
            bar.total = bar.n + count_tiles(_chw.shape[1], _chw.shape[2], new_tile, overlap) * _left
            bar.refresh()

        chw, tile = run_with_backoff(run, chw, up.scale, tile, overlap, up.batch, bar, on_retry)
    return chw, tile


def _whole_on_device(up: Upscaler, run, arr: np.ndarray, passes: int, tile: int,
                     out_size: tuple[int, int]) -> bool:
    """Whether ``up.run_whole`` can do the job: one untiled pass of an 8-bit RGB image to the
    model's own output size, no per-call options, on a device where finishing there pays."""
    h, w, channels = arr.shape
    return (up.run_whole is not None and up.device.split(":")[0] in FINISH_ON_DEVICE
            and run is up.run and passes == 1 and channels == 3 and arr.dtype == np.uint8
            and one_call(h, w, tile)
            and out_size == (w * up.scale, h * up.scale))


def _upscale_planes(up: Upscaler, run, arr: np.ndarray, color_c: int, alpha: np.ndarray | None,
                    alpha_const: bool, passes: int, tile: int, overlap: int,
                    out_size: tuple[int, int], bar) -> tuple[np.ndarray, int]:
    """The general path: colour (and a varying alpha) through the tiler in float, resized to
    ``out_size``, converted back to ``arr``'s integer type on the host."""
    color = _to_float(arr[..., :color_c])
    if color_c == 1:
        color = np.repeat(color, 3, axis=0)
    rgb, used_tile = _run_passes(up, color, passes, tile, overlap, bar, run)
    del color
    rgb = _resize(rgb, out_size)
    if color_c == 1:
        rgb = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), rgb, axes=1)[None]
    planes = [rgb]
    if alpha is not None:
        if alpha_const:
            planes.append(np.full((1, out_size[1], out_size[0]), alpha.flat[0] /
                                  (65535.0 if arr.dtype == np.uint16 else 255.0), np.float32))
        elif up.backend == "diffusion":
            # a mask is no picture: a prompt-guided sampler would invent texture in it
            planes.append(_resize(_to_float(alpha[..., None]), out_size))
        else:
            a = np.repeat(_to_float(alpha[..., None]), 3, axis=0)
            a, used_tile = _run_passes(up, a, passes, used_tile, overlap, bar, run)
            planes.append(_resize(a, out_size).mean(axis=0, keepdims=True))
    chw = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=0)
    return _from_float(chw, arr.dtype), used_tile


def upscale(image: ImageInput, model: str | Path = DEFAULT_UPSCALER, *, scale: float | None = None,
            size: SizeArg = None, tile: int | None = None, overlap: int | None = None,
            backend: str = "auto", device=None, dtype=None, progress: bool = True,
            full_result: bool = False, on_progress: Callable[[int, int], object] | None = None,
            **options):
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

    ``backend="auto"`` runs ``model`` on torch when torch imports and its weights are available
    (packaged, cached or downloadable); otherwise it falls back, in order, to Real-ESRGAN, EDSR
    (cached or downloadable), then the bundled FSRCNN / ESPCN / LapSRN at the model's output scale
    (OpenCV, no torch needed), logging one line that says what it chose and why. What actually ran
    is reported: ``UpscaleResult.model`` / ``.backend`` (and ``.fallback``, the reason), and for
    PIL output ``.info["upscaler"]``, ``["upscale_backend"]`` and ``["upscale_fallback"]``.

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
    if on_progress is not None and not callable(on_progress):
        raise InvalidParameterError(f"on_progress must be a function (done, total), got "
                                    f"{on_progress!r}.")
    t0 = time.perf_counter()
    arr, meta = read_image(image)
    h, w, channels = arr.shape
    target = resolve_model(model)
    options, run_opts = _split_options(options)
    if backend == "auto":  # may substitute a model: result.model/backend and .info say which
        up, fallback = _load_auto(target, device, dtype, progress, options)
    else:
        up = load_upscaler(target, device, dtype, backend=choose_backend(target, backend),
                           progress=progress, **options)
        fallback = None
    run = _bind_run(up, run_opts, fallback)
    default = up.default_scale or up.scale
    out_size = target_size(w, h, scale=scale, size=size, default_scale=default)
    check_canvas(w, h, out_size, up.scale)
    passes = passes_needed(w, h, out_size, up.scale)
    use_tile = up.default_tile if tile is None else tile
    if up.max_tile and (use_tile == 0 or use_tile > up.max_tile):
        if tile is not None:
            log.info("the %s backend tiles at most %d px (asked: %s); using %d", up.backend,
                     up.max_tile, tile or "no tiling", up.max_tile)
        use_tile = up.max_tile
    ov = DEFAULT_OVERLAP if overlap is None else overlap

    color_c = 1 if channels in (1, 2) else 3
    has_alpha = channels in (2, 4)
    alpha = arr[..., -1] if has_alpha else None
    alpha_const = alpha is not None and alpha.min() == alpha.max()
    runs = passes * (2 if has_alpha and not alpha_const and up.backend != "diffusion" else 1)

    from tqdm.auto import tqdm

    total = runs * count_tiles(h, w, use_tile, ov)  # first pass count; later passes refine it
    # reuse_freed_memory: see pipeline_lib/heap.py (page faults were 10-15 % of a CPU run)
    out_arr = None
    with reuse_freed_memory(), tqdm(total=total, desc=f"upscale {up.name}", unit="tile",
                                    disable=not progress, leave=False) as tq:
        bar = ReportingBar(tq, on_progress)
        if _whole_on_device(up, run, arr, passes, use_tile, out_size):
            try:
                out_arr, used_tile = up.run_whole(_to_float(arr)), use_tile
                bar.update(1)
            except TileOutOfMemoryError:
                pass  # the tiled path below halves the tile until it fits
        if out_arr is None:
            out_arr, used_tile = _upscale_planes(up, run, arr, color_c, alpha, alpha_const,
                                                 passes, use_tile, ov, out_size, bar)
        bar.total = bar.n
        bar.refresh()
    result = to_output(out_arr, meta)
    factor = out_size[0] / w
    res = UpscaleResult(result, up.name, up.backend, up.device, up.dtype, factor, out_size,
                        used_tile, time.perf_counter() - t0, dict(meta.info), fallback)
    if hasattr(result, "info"):
        result.info.update(res.as_metadata())
    return res if full_result else result
