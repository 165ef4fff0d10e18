"""pipeline_lib: text → photoreal image → upscaled to 2048² and beyond, on modest hardware.

>>> import pipeline_lib as pl
>>> big = pl.upscale("assets/astronaut.png", size=2048)   # doctest: +SKIP
>>> pl.save_image(big, "out/astronaut_2048.png")          # doctest: +SKIP
"""
from __future__ import annotations

import logging

from . import heap  # noqa: F401  (first: sets THP_MEM_ALLOC_ENABLE before torch allocates)
from .errors import (BackendUnavailableError, GenerationOutOfMemoryError, ImageReadError,
                     ImageTooLargeError, InvalidParameterError, OutputExistsError, PipelineError,
                     TileOutOfMemoryError, UnknownModelError, WeightsError)
from .images import read_image, save_image
from .upscale import UpscaleResult, list_upscalers, load_upscaler, unload_upscalers, upscale
from .media import upscale_file
from .files import upscale_files

from .version import __version__  # noqa: E402

# The generate package is imported eagerly on purpose: it is light (diffusers, transformers and
# torch load inside the functions, on first use), and binding the function here once means a
# later `import pipeline_lib.generate.x` cannot leave the *module* in place of `generate()`.
from .generate import (GeneratedImage, Preset, generate, img2img, list_presets,  # noqa: E402
                       load_pipeline, register_preset, size_for_aspect, unload_pipeline)
# compose eagerly too: importing it registers the hires fix's pixel upscaler with generate/
# (which may not import upscale/ itself); it loads no torch at import either.
from .compose import refine, text_to_image  # noqa: E402
from .refine_plan import refine_memory_plan  # noqa: E402
from .metadata import format_parameters, parse_parameters, read_metadata  # noqa: E402

# The HTTP service (FastAPI/uvicorn), batch jobs (Accelerate) and the notebook helpers
# (matplotlib/ipywidgets) load on first use, so
# `import pipeline_lib` stays fast for upscaling-only users and the CLI.
_LAZY = {
    "create_app": ".server", "serve": ".server", "ServerLimits": ".server",
    "run_batch": ".batch", "read_jobs": ".batch", "BatchReport": ".batch",
    # figures and the notebook app pull in matplotlib / ipywidgets
    "side_by_side": ".compare", "zoom_crops": ".compare", "compare_upscalers": ".compare",
    "compare_refine": ".compare", "compare_models": ".compare", "app": ".widgets",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "upscale", "upscale_file", "upscale_files", "load_upscaler", "list_upscalers", "unload_upscalers", "UpscaleResult",
    "save_image", "read_image",
    "generate", "img2img", "text_to_image", "refine", "refine_memory_plan", "load_pipeline", "unload_pipeline", "GeneratedImage",
    "list_presets", "register_preset", "size_for_aspect", "Preset",
    "read_metadata", "format_parameters", "parse_parameters",
    "PipelineError", "InvalidParameterError", "ImageReadError", "ImageTooLargeError",
    "UnknownModelError", "WeightsError", "BackendUnavailableError", "TileOutOfMemoryError",
    "OutputExistsError", "GenerationOutOfMemoryError", "__version__",
    "create_app", "serve", "ServerLimits",
    "run_batch", "read_jobs", "BatchReport",
    "side_by_side", "zoom_crops", "compare_upscalers", "compare_refine", "compare_models", "app",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
