"""Upscaler backends. Each module exposes ``load(target, device, dtype, **options) -> Upscaler``.

``BACKENDS`` is the one registry of them (name → loader); ``upscale()`` looks names up here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ...errors import BackendUnavailableError, InvalidParameterError


@dataclass
class Upscaler:
    """A loaded model, ready for the tiler.

    ``run`` takes float32 ``N×3×h×w`` arrays in 0..1 and returns ``N×3×(h·scale)×(w·scale)``.
    ``run_options`` names the keyword arguments ``run`` accepts per call (e.g. a diffusion
    upscaler's prompt and seed); they are not part of the load cache key.
    ``run_whole``, where a backend has it, runs one float32 ``3×h×w`` image in a single call and
    returns the ``(h·scale)×(w·scale)×3`` uint8 image, converted on the device; ``upscale()``
    uses it for untiled one-pass RGB jobs on devices listed in ``upscale.FINISH_ON_DEVICE``.
    """

    name: str
    backend: str
    scale: int
    run: Callable[[np.ndarray], np.ndarray]
    device: str
    dtype: str
    default_tile: int = 256
    max_tile: int | None = None
    batch: int = 1
    default_scale: float | None = None
    release: Callable[[], None] = lambda: None
    info: dict[str, Any] = field(default_factory=dict)
    run_options: frozenset[str] = frozenset()
    run_whole: Callable[[np.ndarray], np.ndarray] | None = None


# name → module path; modules import their heavy packages lazily, so listing costs nothing
BACKENDS: dict[str, str] = {
    "torch": "pipeline_lib.upscale.backends.torch_backend",
    "opencv": "pipeline_lib.upscale.backends.opencv_backend",
    "ncnn": "pipeline_lib.upscale.backends.ncnn_backend",
    "diffusion": "pipeline_lib.upscale.backends.diffusion_backend",
}

# Per-call options each backend's ``run`` takes, known without importing the backend, so
# ``upscale(**options)`` can keep them out of the model-load cache key.
RUN_OPTIONS: dict[str, frozenset[str]] = {
    "diffusion": frozenset({"prompt", "negative_prompt", "steps", "guidance", "noise_level", "seed"}),
}


def backend_module(name: str):
    if name not in BACKENDS:
        raise InvalidParameterError(f"unknown backend {name!r}; choose one of "
                                    f"{', '.join(['auto', *BACKENDS])}.")
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} cannot be used: {exc}") from exc
