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

__all__ = [
    "upscale", "upscale_file", "load_upscaler", "list_upscalers", "clear_cache", "UpscaleResult",
    "save_image", "read_image",
    "PipelineError", "InvalidParameterError", "ImageReadError", "ImageTooLargeError",
    "UnknownModelError", "WeightsError", "BackendUnavailableError", "TileOutOfMemoryError",
    "OutputExistsError", "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
