"""Tiny random pipelines that stand in for real models, so everything runs offline in seconds.

- ``tiny-random`` (also ``tiny-sd`` / ``tiny-sdxl``): always available; random weights, so the
  pictures are noise. A smoke test of the whole path — CLI, metadata, upscaling — with no
  download (``python -m pipeline_lib generate "x" -m tiny-random -o out/``).
- Test mode (``PIPELINE_LIB_NOTEBOOK_TEST=1``): every preset resolves to the tiny pipeline of its
  family (SD-1.x or SDXL) with a warning, so notebooks, README examples and scripts run offline;
  the metadata records the stand-in's name, never the real model's.

The tiny pipelines are built once by :mod:`pipeline_lib.testing` (a few seconds) and cached.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .. import config
from .presets import BUILT_IN, Preset

__all__ = ["TINY_MODELS", "stand_in"]

log = logging.getLogger(__name__)

#: name → whether it is the SDXL-shaped one
TINY_MODELS = {"tiny-random": False, "tiny-sd": False, "tiny-sdxl": True}
_NOISE = "random weights, makes noise: an offline smoke test (built on first use)"


def _tiny(name: str, xl: bool) -> Preset:
    from ..testing import tiny_sd_pipeline_dir, tiny_sdxl_pipeline_dir

    folder = tiny_sdxl_pipeline_dir() if xl else tiny_sd_pipeline_dir()
    return Preset(name, str(folder),
                  "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline", steps=2,
                  guidance=5.0, size=(64, 64), multiple=64 if xl else 8, description=_NOISE)


def stand_in(text: str, preset: Preset | None) -> Preset | None:
    """The tiny preset to load instead of ``text``/``preset``, or None to load the real one."""
    key = text.strip().lower()
    if key in TINY_MODELS and (preset is None or preset.repo == BUILT_IN):
        log.warning("%s has random weights: its pictures are noise (an offline smoke test of "
                    "the whole path, not a model)", key)
        return _tiny(key, TINY_MODELS[key])
    if preset is None or not config.get("PIPELINE_LIB_NOTEBOOK_TEST"):
        return None
    if preset.repo != BUILT_IN and Path(preset.repo).expanduser().exists():
        return None  # weights on this machine already: nothing to download, nothing to stand in
    xl = preset.multiple == 64
    name = "tiny-sdxl" if xl else "tiny-sd"
    log.warning("test mode (PIPELINE_LIB_NOTEBOOK_TEST=1): %s runs as the tiny random pipeline "
                "%s (noise); unset the variable to use the real model", preset.name, name)
    return _tiny(name, xl)
