"""Text → photoreal image with diffusers: ``generate()``, the pipeline cache, presets.

>>> from pipeline_lib import generate
>>> img = generate("portrait of an old fisherman, golden hour", seed=42)[0]   # doctest: +SKIP
"""
from .api import MAX_IMAGES, GeneratedImage, generate
from .img2img import Session, as_rgb, img2img, img2img_session
from .passes import CONTROLNET_TILE, register_pixel_upscaler
from .pipeline import (current_pipeline, get_loaded, load_pipeline, move_off_gpu,
                       unload_pipeline)
from .presets import (DEFAULT_PRESET, PRESETS, Preset, get_preset, list_presets, register_preset,
                      size_for_aspect)

__all__ = ["generate", "img2img", "img2img_session", "Session", "as_rgb", "register_pixel_upscaler",
           "CONTROLNET_TILE", "load_pipeline", "unload_pipeline", "current_pipeline", "get_loaded",
           "move_off_gpu", "GeneratedImage", "list_presets", "register_preset", "get_preset",
           "size_for_aspect", "Preset", "PRESETS", "DEFAULT_PRESET", "MAX_IMAGES"]
