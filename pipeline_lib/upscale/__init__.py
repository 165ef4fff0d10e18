"""Upscaling: ``upscale()``, the model registry, loading and caching, the tiler and backends.

>>> from pipeline_lib import upscale
>>> big = upscale("assets/astronaut.png", size=2048)           # doctest: +SKIP
"""
from .api import FINISH_ON_DEVICE, UpscaleResult, list_upscalers, upscale
from .backends import BACKENDS, Upscaler
from .cache import load_upscaler, unload_upscalers
from .registry import MODELS, ModelSpec
from .targets import DEFAULT_UPSCALER, choose_backend, resolve_model
from .tiling import DEFAULT_OVERLAP

__all__ = ["upscale", "UpscaleResult", "list_upscalers", "load_upscaler", "unload_upscalers",
           "resolve_model", "choose_backend", "DEFAULT_UPSCALER", "DEFAULT_OVERLAP",
           "FINISH_ON_DEVICE", "BACKENDS", "Upscaler", "MODELS", "ModelSpec"]
