"""Make room on the GPU for a foreign runtime (ncnn's Vulkan) by asking loaded models to step aside.

Vulkan and CUDA allocators do not share memory well inside one process: a diffusion pipeline
resident on CUDA can make ncnn's Vulkan allocations fail or crawl. Modules that keep big models
on the GPU register an *evictor* here; a backend about to use the GPU through another API calls
:func:`evict_gpu_models` first. This module imports nothing heavy, so both sides can depend on it
without depending on each other.

>>> def offload(reason):            # e.g. in the diffusion module
...     return False                # True when something was actually moved off the GPU
>>> _ = register_gpu_evictor(offload)
>>> evict_gpu_models("ncnn Vulkan upscaling")
[]
>>> unregister_gpu_evictor(offload)
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

__all__ = ["register_gpu_evictor", "unregister_gpu_evictor", "evict_gpu_models"]

log = logging.getLogger(__name__)

#: An evictor gets the reason and moves its models off the GPU; it returns a truthy description
#: (True or a short text such as "diffusion pipeline sdxl") when it moved something.
Evictor = Callable[[str], object]

_EVICTORS: list[Evictor] = []
_LOCK = threading.Lock()


def register_gpu_evictor(fn: Evictor) -> Evictor:
    """Register ``fn`` (once); usable as a decorator. Returns ``fn``."""
    with _LOCK:
        if fn not in _EVICTORS:
            _EVICTORS.append(fn)
    return fn


def unregister_gpu_evictor(fn: Evictor) -> None:
    """Forget ``fn``; unknown functions are ignored."""
    with _LOCK:
        if fn in _EVICTORS:
            _EVICTORS.remove(fn)


def evict_gpu_models(reason: str) -> list[str]:
    """Ask every registered evictor to move its models off the GPU; return what was moved.

    A failing evictor is logged and skipped: freeing memory is best effort and must not stop
    the caller (which then may run out of memory and say so itself).
    """
    with _LOCK:
        evictors = list(_EVICTORS)
    moved: list[str] = []
    for fn in evictors:
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            result = fn(reason)
        except Exception:
            log.exception("GPU evictor %s failed", name)
            continue
        if result:
            what = result if isinstance(result, str) else name
            moved.append(what)
            log.warning("moved %s off the GPU before %s (CUDA and Vulkan memory do not mix)",
                        what, reason)
    return moved
