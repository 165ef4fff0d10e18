"""Upscaler backends: one module each (torch, opencv, ncnn, diffusion) behind the interface in
:mod:`.base`; ``BACKENDS`` names them."""
from .base import BACKENDS, Backend, Upscaler, backend_for_file, get_backend, run_options

__all__ = ["BACKENDS", "Backend", "Upscaler", "backend_for_file", "get_backend", "run_options"]
