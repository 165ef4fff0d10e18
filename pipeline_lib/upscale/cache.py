"""Loaded upscalers, one per (backend, model, device, dtype, options) per process, and the
automatic choice among candidates when the requested one cannot run here."""
from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

from ..errors import BackendUnavailableError, WeightsError
from .backends import Upscaler, get_backend, run_options
from .registry import ModelSpec
from .targets import (DEFAULT_UPSCALER, auto_candidates, choose_backend, resolve_model,
                      target_name)

__all__ = ["load_upscaler", "unload_upscalers", "load_with_fallback", "split_options"]

log = logging.getLogger(__name__)

_CACHE: dict[tuple, Upscaler] = {}
_CACHE_LOCK = threading.Lock()


def split_options(options: dict) -> tuple[dict, dict]:
    """(load options, per-call options): per-call ones (a diffusion upscaler's prompt, seed, ...)
    go to ``Upscaler.run`` and stay out of the load cache key."""
    per_call = run_options()
    return ({k: v for k, v in options.items() if k not in per_call},
            {k: v for k, v in options.items() if k in per_call})


def load_with_fallback(target: ModelSpec | str, device, dtype, progress: bool, options: dict,
                       substitutes: bool = True) -> tuple[Upscaler, str | None]:
    """Load the first candidate of ``backend="auto"`` that works; log what was chosen and why.

    Candidates are the model on each of its backends, then (only with ``substitutes``) other
    models of the same scale. Returns the upscaler and, when it is not the requested model/first
    backend, the reason. Only "cannot be used here" errors (backend not importable, weights
    missing/unreachable or damaged) move on to the next candidate; bad arguments still raise, and
    when every candidate fails the first one's own error (which says how to get that model) is
    raised with the others' reasons added.
    """
    wanted = target_name(target)
    failed: list[str] = []
    first_error: Exception | None = None
    cands = auto_candidates(target)
    if not substitutes:
        cands = [(cand, backend) for cand, backend in cands if cand is target]
    for cand, backend in cands:
        name = target_name(cand)
        try:
            up = load_upscaler(cand, device, dtype, backend=backend, progress=progress, **options)
        except (BackendUnavailableError, WeightsError) as exc:
            if len(cands) == 1 and substitutes:  # nothing to fall back to: the error says most
                raise
            if len(cands) == 1:
                raise type(exc)(f"{exc} Pass fallback=True (CLI: --fallback) to let another "
                                "model of the same scale run instead.") from exc
            first_error = first_error or exc
            failed.append(f"{name} on {backend}: {str(exc).split('. ')[0]}")
            continue
        if not failed:
            log.info("upscaler auto: %s on %s (requested model; %s imports and its weights are "
                     "available)", name, backend, backend)
            return up, None
        why = "; ".join(failed)
        log.warning("upscaler auto: using %s on %s instead of %s, because %s", name, backend,
                    wanted, why)
        return up, f"{name} on {backend} instead of {wanted}: {why}"
    if not substitutes and first_error is not None:
        tail = f" (also tried: {'; '.join(failed[1:])})" if len(failed) > 1 else ""
        raise type(first_error)(f"{first_error}{tail} Pass fallback=True (CLI: --fallback) to let "
                                f"another model of the same scale run instead.") from first_error
    raise BackendUnavailableError(f"no upscaler could be loaded for {wanted}: {'; '.join(failed)}; "
                                  "Install torch, or allow the weight download (unset "
                                  "PIPELINE_LIB_OFFLINE / HF_HUB_OFFLINE).")


def load_upscaler(model: str | Path | ModelSpec | None = None, device=None, dtype=None, *,
                  backend: str = "auto", progress: bool = True, fallback: bool = False,
                  **options) -> Upscaler:
    """Load (once per process) a model by registry name, file path or URL.

    Cached by (backend, model, device, dtype, options): a second call returns the same object
    without touching the disk. ``backend="auto"`` tries the model's backends in turn; another
    model is substituted only when none was named (``model=None``: the default chain) or with
    ``fallback=True``, exactly as :func:`~pipeline_lib.upscale` does; the returned upscaler's
    ``name``/``backend`` say what was loaded. :func:`unload_upscalers` frees everything, GPU
    memory included.

    >>> up = load_upscaler("realesr-animevideov3", device="cpu")
    >>> up.scale, up.backend
    (4, 'torch')
    """
    target = resolve_model(DEFAULT_UPSCALER if model is None else model)
    if backend == "auto":
        return load_with_fallback(target, device, dtype, progress, options,
                                  substitutes=fallback or model is None)[0]
    backend = choose_backend(target, backend)  # checks the model runs on it
    plugin = get_backend(backend)
    module = plugin.load_module()  # first, so a missing torch is a BackendUnavailableError
    if device is None and plugin.torch_device:
        from ..devices import resolve_device

        device = str(resolve_device(None))
    key = (backend, target_name(target), str(device), str(dtype), tuple(sorted(options.items())))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        up = module.load(target, device=device, dtype=dtype, progress=progress, **options)
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
