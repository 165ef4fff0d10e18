"""Typed errors. Every message says what was wrong and what to do about it.

All errors derive from :class:`PipelineError`; the ones about bad arguments also derive from
``ValueError`` so ordinary ``except ValueError`` code keeps working.
"""
from __future__ import annotations

__all__ = ["PipelineError", "InvalidParameterError", "ImageReadError", "ImageTooLargeError",
           "UnknownModelError", "WeightsError", "BackendUnavailableError", "TileOutOfMemoryError",
           "WholeImageOutOfMemoryError", "OutputExistsError", "GenerationOutOfMemoryError"]


class PipelineError(Exception):
    """Base class of every error pipeline_lib raises on purpose."""


class InvalidParameterError(PipelineError, ValueError):
    """An argument is out of range or of the wrong kind; the message gives the accepted range."""


class ImageReadError(PipelineError, ValueError):
    """An input could not be read as an image (missing, empty, truncated, not an image...)."""


class ImageTooLargeError(ImageReadError):
    """An input image declares more pixels than the configured limit (decompression-bomb guard)."""


class UnknownModelError(PipelineError, KeyError):
    """A model name is neither in the registry nor an existing file or URL."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class WeightsError(PipelineError):
    """Weights are missing, corrupt, unreachable or not an upscaler."""


class BackendUnavailableError(PipelineError, ImportError):
    """A backend's package is not installed (or installed in an unusable variant)."""


class TileOutOfMemoryError(PipelineError, MemoryError):
    """A backend ran out of device memory on one tile; the tiler reacts by shrinking tiles."""


class WholeImageOutOfMemoryError(TileOutOfMemoryError):
    """Out of memory in a model that must see the whole image (spandrel marks its tiling
    "internal"): smaller tiles are no cure, so the tiler passes it on instead of retrying."""


class OutputExistsError(PipelineError, FileExistsError):
    """An output file already exists and overwriting was not asked for."""


class GenerationOutOfMemoryError(PipelineError, MemoryError):
    """Generation ran out of device memory; the message names the settings to lower
    (``memory="low"``, a smaller size, fewer images). The pipeline stays usable for the next job."""
