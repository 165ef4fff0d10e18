"""How ``text_to_image`` talks to diffusion upscalers: prompt/seed hand-over and the SD → x2-latent
latent hand-off (generate with ``output_type="latent"``, upscale the latents, no VAE round trip).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from ..errors import BackendUnavailableError, WeightsError
from .registry import ModelSpec

__all__ = ["LATENT_CLASS", "SD_LATENT_SPACE", "upscaler_options", "latent_handoff"]

log = logging.getLogger(__name__)

LATENT_CLASS = "StableDiffusionLatentUpscalePipeline"
# Generation pipelines whose latents live in the SD-1.x/2.x VAE space the latent upscaler knows.
SD_LATENT_SPACE = ("StableDiffusionPipeline",)


def _pipeline_class(upscaler) -> str | None:
    """The diffusers class a diffusion upscaler name/folder stands for; None for other upscalers."""
    from . import resolve_model

    try:
        target = resolve_model(upscaler)
    except Exception:  # unknown names are reported by upscale() itself, with suggestions
        return None
    if isinstance(target, ModelSpec):
        return target.extra.get("pipeline") if "diffusion" in target.backends else None
    index = Path(target, "model_index.json")
    return json.loads(index.read_text())["_class_name"] if index.is_file() else None


def upscaler_options(upscaler, gen) -> dict[str, Any]:
    """Per-call options for ``upscale()``: a diffusion upscaler is guided by the picture's own
    prompt and seeded with its seed (so the result is reproducible); others take none."""
    if _pipeline_class(upscaler) is None:
        return {}
    return {"prompt": gen.params.get("prompt", ""), "seed": gen.seed}


def latent_handoff(model, upscaler, generate_kwargs: dict) -> Callable | None:
    """A function ``(GeneratedImage with latents, size) -> UpscaleResult`` when ``upscaler`` is an x2
    latent upscaler and ``model`` an SD-1.x/2.x pipeline; None otherwise (decode, then upscale)."""
    if _pipeline_class(upscaler) != LATENT_CLASS:
        return None
    from ..generate.pipeline import get_loaded

    device, progress = generate_kwargs.get("device"), generate_kwargs.get("progress", True)
    speed = {k: generate_kwargs.get(k) for k in ("channels_last", "fuse_qkv", "compile")}
    loaded = get_loaded(model, device=device, memory=generate_kwargs.get("memory", "auto"),
                        progress=progress, **speed)  # cached: generate() reuses it
    kind = type(loaded.pipe).__name__
    if kind not in SD_LATENT_SPACE or (loaded.preset and loaded.preset.refiner):
        log.info("%s latents are not in the SD-1.x latent space; decoding, then upscaling the "
                 "image with %s", kind, upscaler)
        return None
    from . import load_upscaler

    try:
        up = load_upscaler(upscaler, device, backend="diffusion", progress=progress)
    except (WeightsError, BackendUnavailableError) as exc:
        log.warning("latent upscaler unavailable (%s); decoding and upscaling the image instead", exc)
        return None

    def handoff(gen, size):
        return _upscale_latents(up, upscaler, gen, size, progress)

    return handoff


def _upscale_latents(up, upscaler, gen, size, progress: bool):
    import time

    import numpy as np
    from PIL import Image

    from . import UpscaleResult, _from_float, _resize, upscale
    from .backends.diffusion_backend import upscale_latents
    from .sizing import target_size

    t0 = time.perf_counter()
    opts = upscaler_options(upscaler, gen)
    chw = upscale_latents(up, gen.image, **opts)[0]
    h, w = chw.shape[1:]
    src_w = gen.params.get("width", w // up.scale)
    out_size = target_size(w, h, size=size)
    if out_size[0] > w or out_size[1] > h:  # more passes of the same model, then the resize
        img = Image.fromarray(_from_float(chw, np.dtype(np.uint8)))
        res = upscale(img, upscaler, size=size, backend="diffusion", progress=progress,
                      full_result=True, **opts)
        image, used_tile = res.image, res.tile
    else:
        image, used_tile = Image.fromarray(_from_float(_resize(chw, out_size), np.dtype(np.uint8))), 0
    image.info.update({"upscaler": up.name, "upscale_backend": "diffusion",
                       "upscale_factor": f"{out_size[0] / src_w:g}"})
    return UpscaleResult(image, up.name, "diffusion", up.device, up.dtype, out_size[0] / src_w,
                         out_size, used_tile, time.perf_counter() - t0)
