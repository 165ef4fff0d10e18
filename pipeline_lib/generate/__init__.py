"""Text → photoreal image with diffusers: ``generate()``, the pipeline cache, presets.

>>> from pipeline_lib import generate
>>> img = generate("portrait of an old fisherman, golden hour", seed=42)[0]   # doctest: +SKIP
"""
from .api import MAX_IMAGES, GeneratedImage, generate
from .pipeline import (current_pipeline, get_loaded, load_pipeline, move_off_gpu,
                       unload_pipeline)
from .presets import (DEFAULT_PRESET, PRESETS, Preset, get_preset, list_presets, register_preset,
                      size_for_aspect)

__all__ = ["generate", "load_pipeline", "unload_pipeline", "current_pipeline", "get_loaded",
           "move_off_gpu", "GeneratedImage", "list_presets", "register_preset", "get_preset",
           "size_for_aspect", "Preset", "PRESETS", "DEFAULT_PRESET", "MAX_IMAGES"]
