"""The one interface every upscaler backend implements, and the registry that names them.

A backend is a module with ``load(target, device=, dtype=, progress=, **options) -> Upscaler``.
The core never special-cases a backend by name: what it needs to know before (or without)
importing one — which local files it reads, its per-call options, whether it takes torch device
names, whether an alpha plane may go through it — is declared here in a :class:`Backend`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import BackendUnavailableError, InvalidParameterError

__all__ = ["Upscaler", "Backend", "BACKENDS", "get_backend", "backend_for_file", "run_options"]


@dataclass
class Upscaler:
    """A loaded model, ready for the tiler.

    ``run`` takes float32 ``N×3×h×w`` arrays in 0..1 and returns ``N×3×(h·scale)×(w·scale)``.
    ``run_options`` names the keyword arguments ``run`` accepts per call (e.g. a diffusion
    upscaler's prompt and seed); they are not part of the load cache key.
    ``run_whole``, where a backend has it, runs one float32 ``3×h×w`` image in a single call and
    returns the ``(h·scale)×(w·scale)×3`` uint8 image, converted on the device; ``upscale()``
    uses it for untiled one-pass RGB jobs on devices where that pays.
    ``native`` is the object the backend runs (a torch module, a diffusers pipeline, an ncnn
    net), for callers that need the model itself; ``speedups`` names the fast paths applied.
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
    run_options: frozenset[str] = frozenset()
    run_whole: Callable[[np.ndarray], np.ndarray] | None = None
    architecture: str = ""
    weights: str = ""
    native: Any = None
    speedups: tuple[str, ...] = ()
    threads: int | None = None
    tiling: str = "supported"  # spandrel's advice: supported | discouraged | internal
    overlap: int | None = None  # tile overlap this architecture needs for seam-free output


@dataclass(frozen=True)
class Backend:
    """What the core knows about a backend without importing it.

    ``reads``: local weight-file suffixes in a format only this backend reads; ``folder_marker``:
    a folder holding this file is one of its models; ``run_options``: per-call keyword arguments
    of its ``Upscaler.run``; ``torch_device``: it takes torch device names (resolved before the
    load so they are part of the cache key); ``alpha_as_picture``: an alpha plane may run through
    the model like a gray picture (False for prompt-guided samplers, which would invent texture).
    """

    name: str
    module: str
    reads: tuple[str, ...] = ()
    folder_marker: str | None = None
    run_options: frozenset[str] = frozenset()
    torch_device: bool = False
    alpha_as_picture: bool = True
    auto: bool = True  # False: used only when asked for by name (backend="openvino")
    also_runs: tuple[str, ...] = ()  # runs every model these backends run (from their weights)

    def runs(self, model_backends: tuple[str, ...]) -> bool:
        """Whether a registry model listing ``model_backends`` can run here."""
        return self.name in model_backends or any(b in model_backends for b in self.also_runs)

    def accepts(self, target: str) -> bool:
        """Whether the local file or folder ``target`` is in this backend's format."""
        if self.folder_marker is not None:
            return Path(target, self.folder_marker).is_file()
        return target.lower().endswith(self.reads)

    def load_module(self):
        """The backend module; :class:`BackendUnavailableError` when its package is missing."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            raise BackendUnavailableError(f"backend {self.name!r} cannot be used: {exc}") from exc


_PKG = __name__.rsplit(".", 1)[0]
#: The registry. A local file or URL that no backend claims goes to torch (spandrel identifies
#: the architecture from the weights).
BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("torch", f"{_PKG}.torch_backend", reads=(".pth", ".pt", ".safetensors", ".ckpt"),
            torch_device=True),
    Backend("opencv", f"{_PKG}.opencv_backend", reads=(".pb",)),
    Backend("ncnn", f"{_PKG}.ncnn_backend", reads=(".param",)),
    # exports the torch model to OpenVINO IR once; opt-in (bench/README.md: measured, not auto)
    Backend("openvino", f"{_PKG}.openvino_backend", auto=False, also_runs=("torch",)),
    Backend("diffusion", f"{_PKG}.diffusion_backend", folder_marker="model_index.json",
            run_options=frozenset({"prompt", "negative_prompt", "steps", "guidance",
                                   "noise_level", "seed"}),
            torch_device=True, alpha_as_picture=False),
)}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise InvalidParameterError(f"unknown backend {name!r}; choose one of "
                                    f"{', '.join(['auto', *BACKENDS])}.")
    return BACKENDS[name]


def backend_for_file(target: str) -> str:
    """The backend that reads the local file/folder or URL ``target`` (torch when none claims it)."""
    for backend in BACKENDS.values():
        if backend.accepts(target):
            return backend.name
    return "torch"


def run_options(backend: str | None = None) -> frozenset[str]:
    """Per-call options of one backend, or of all of them (``None``)."""
    if backend is not None:
        return get_backend(backend).run_options
    return frozenset().union(*(b.run_options for b in BACKENDS.values()))
