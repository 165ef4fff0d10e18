"""pipeline_lib: text → photoreal image → upscaled to 2048² and beyond, on modest hardware.

>>> import pipeline_lib as pl
>>> big = pl.upscale("assets/astronaut.png", size=2048)   # doctest: +SKIP
>>> pl.save_image(big, "out/astronaut_2048.png")          # doctest: +SKIP
"""
from __future__ import annotations

import logging

from .errors import (BackendUnavailableError, ImageReadError, ImageTooLargeError,
                     InvalidParameterError, OutputExistsError, PipelineError,
                     TileOutOfMemoryError, UnknownModelError, WeightsError)
from .images import read_image, save_image
from .upscale import (UpscaleResult, clear_cache, list_upscalers, load_upscaler, upscale)
from .media import upscale_file

__version__ = "0.1.0"

# Generation pulls in diffusers/transformers (seconds to import); load it on first use so
# `import pipeline_lib` stays light for upscaling-only users and the CLI.
_LAZY = {
    "generate": ".generate", "text_to_image": ".generate", "load_pipeline": ".generate",
    "unload_pipeline": ".generate", "GeneratedImage": ".generate", "list_presets": ".generate",
    "register_preset": ".generate", "size_for_aspect": ".generate", "Preset": ".generate",
    "read_metadata": ".metadata", "format_parameters": ".metadata", "parse_parameters": ".metadata",
    # the HTTP service pulls in FastAPI/uvicorn
    "create_app": ".server", "serve": ".server", "ServerLimits": ".server",
    # figures and the notebook app pull in matplotlib / ipywidgets
    "side_by_side": ".compare", "zoom_crops": ".compare", "compare_upscalers": ".compare",
    "compare_models": ".compare", "app": ".widgets",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "upscale", "upscale_file", "load_upscaler", "list_upscalers", "clear_cache", "UpscaleResult",
    "save_image", "read_image",
    "generate", "text_to_image", "load_pipeline", "unload_pipeline", "GeneratedImage",
    "list_presets", "register_preset", "size_for_aspect", "Preset",
    "read_metadata", "format_parameters", "parse_parameters",
    "PipelineError", "InvalidParameterError", "ImageReadError", "ImageTooLargeError",
    "UnknownModelError", "WeightsError", "BackendUnavailableError", "TileOutOfMemoryError",
    "OutputExistsError", "__version__",
    "create_app", "serve", "ServerLimits",
    "side_by_side", "zoom_crops", "compare_upscalers", "compare_models", "app",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
