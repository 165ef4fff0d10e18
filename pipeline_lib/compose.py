"""Where generation meets upscaling: ``text_to_image`` (prompt → picture → target size) and the
SD → x2-latent hand-off (generate with ``output_type="latent"``, upscale the latents, no VAE
round trip). The only module that uses both :mod:`pipeline_lib.generate` and
:mod:`pipeline_lib.upscale`; neither of those imports the other.

>>> from pipeline_lib import text_to_image
>>> big = text_to_image("portrait of an old fisherman", size=2048)[0]      # doctest: +SKIP
>>> big.image.size                                                         # doctest: +SKIP
(1365, 2048)
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import devices
from .errors import BackendUnavailableError, InvalidParameterError, WeightsError
from .generate import DEFAULT_PRESET, GeneratedImage, current_pipeline, generate, move_off_gpu
from .generate.pipeline import get_loaded
from .upscale import (DEFAULT_UPSCALER, ModelSpec, UpscaleResult, load_upscaler, resolve_model,
                      upscale)
from .upscale.pixels import from_float, resize
from .upscale.sizing import parse_size, target_size

__all__ = ["text_to_image", "upscaler_options", "latent_handoff", "make_room",
           "UPSCALE_HEADROOM", "SD_LATENT_SPACE"]

log = logging.getLogger(__name__)

UPSCALE_HEADROOM = 3 * 1024 ** 3  # free GPU bytes the upscaler wants; less → park the pipeline
# Generation pipelines whose latents live in the SD-1.x/2.x VAE space the latent upscaler knows.
SD_LATENT_SPACE = ("StableDiffusionPipeline",)


def _diffusers_class(upscaler) -> str | None:
    """The diffusers class a diffusion upscaler name/folder stands for; None for other upscalers."""
    try:
        target = resolve_model(upscaler)
    except Exception:  # unknown names are reported by upscale() itself, with suggestions
        return None
    if isinstance(target, ModelSpec):
        return target.pipeline if "diffusion" in target.backends else None
    index = Path(target, "model_index.json")
    return json.loads(index.read_text())["_class_name"] if index.is_file() else None


def upscaler_options(upscaler, gen: GeneratedImage) -> dict[str, Any]:
    """Per-call options for ``upscale()``: a diffusion upscaler is guided by the picture's own
    prompt and seeded with its seed (so the result is reproducible); others take none."""
    if _diffusers_class(upscaler) is None:
        return {}
    return {"prompt": gen.params.get("prompt", ""), "seed": gen.seed}


def latent_handoff(model, upscaler, generate_kwargs: dict) -> Callable | None:
    """A function ``(GeneratedImage with latents, size) -> UpscaleResult`` when ``upscaler`` is an x2
    latent upscaler and ``model`` an SD-1.x/2.x pipeline; None otherwise (decode, then upscale)."""
    from .upscale.backends.diffusion_backend import LATENT  # imports torch: only when asked

    if _diffusers_class(upscaler) != LATENT:
        return None
    device, progress = generate_kwargs.get("device"), generate_kwargs.get("progress", True)
    speed = {k: generate_kwargs.get(k) for k in ("channels_last", "fuse_qkv", "compile")}
    loaded = get_loaded(model, device=device, memory=generate_kwargs.get("memory", "auto"),
                        progress=progress, **speed)  # cached: generate() reuses it
    kind = type(loaded.pipe).__name__
    if kind not in SD_LATENT_SPACE or (loaded.preset and loaded.preset.refiner):
        log.info("%s latents are not in the SD-1.x latent space; decoding, then upscaling the "
                 "image with %s", kind, upscaler)
        return None
    try:
        up = load_upscaler(upscaler, device, backend="diffusion", progress=progress)
    except (WeightsError, BackendUnavailableError) as exc:
        log.warning("latent upscaler unavailable (%s); decoding and upscaling the image instead", exc)
        return None

    def handoff(gen: GeneratedImage, size) -> UpscaleResult:
        return _upscale_latents(up, upscaler, gen, size, progress)

    return handoff


def _upscale_latents(up, upscaler, gen: GeneratedImage, size, progress: bool) -> UpscaleResult:
    from PIL import Image

    from .upscale.backends.diffusion_backend import upscale_latents

    t0 = time.perf_counter()
    opts = upscaler_options(upscaler, gen)
    chw = upscale_latents(up, gen.image, **opts)[0]
    h, w = chw.shape[1:]
    src_w = gen.params.get("width", w // up.scale)
    out_size = target_size(w, h, size=size)
    if out_size[0] > w or out_size[1] > h:  # more passes of the same model, then the resize
        img = Image.fromarray(from_float(chw, np.dtype(np.uint8)))
        res = upscale(img, upscaler, size=size, backend="diffusion", progress=progress,
                      full_result=True, **opts)
        image, used_tile = res.image, res.tile
    else:
        image, used_tile = Image.fromarray(from_float(resize(chw, out_size), np.dtype(np.uint8))), 0
    result = UpscaleResult(image, up.name, "diffusion", up.device, up.dtype, out_size[0] / src_w,
                           out_size, used_tile, time.perf_counter() - t0)
    image.info.update(result.as_metadata())
    return result


def make_room() -> None:
    """Park the diffusion pipeline in RAM when the GPU lacks room for the upscaler beside it."""
    cur = current_pipeline()
    if cur is None or not cur.plan.device.startswith("cuda"):
        return
    import torch

    free = devices.free_memory(torch.device(cur.plan.device))
    if free is not None and free < UPSCALE_HEADROOM:
        move_off_gpu()


def text_to_image(prompt: str, *, model: str = DEFAULT_PRESET, upscaler: str = DEFAULT_UPSCALER,
                  size: int | tuple[int, int] | str = 2048, **generate_kwargs) -> list[GeneratedImage]:
    """Generate, then upscale each picture to ``size``: an int is the long side (aspect kept:
    512×768 → 1365×2048), ``(w, h)`` is exact. A diffusion upscaler (sd-x4, sd-x2-latent) gets
    the image's prompt and seed; ``upscaler="sd-x2-latent"`` after an SD-1.x/2.x model takes the
    latents directly (no VAE decode/encode), then further passes/resizing reach ``size``. The
    diffusion model is moved off the GPU first when the two would not fit together. Each
    result's ``params`` adds upscaler, upscale_by and upscale_size;
    ``generate(**result.generate_kwargs())`` re-makes the un-upscaled picture.

    >>> out = text_to_image("a red fox in snow", model="sdxl-turbo", size=2048)[0]  # doctest: +SKIP
    >>> out.image.size                                                           # doctest: +SKIP
    (2048, 2048)
    """
    target = parse_size(size)
    if target is None:
        raise InvalidParameterError("size must be a long side (e.g. 2048) or (width, height).")
    resolve_model(upscaler)  # an unknown upscaler fails now, not after minutes of generation
    progress = generate_kwargs.get("progress", True)
    device = generate_kwargs.get("device")
    handoff = latent_handoff(model, upscaler, generate_kwargs)
    images = generate(prompt, model=model, output_type="latent" if handoff else "pil",
                      **generate_kwargs)
    make_room()
    out = []
    for gen in images:
        if handoff:  # SD latents straight into the x2 latent upscaler: no decode/encode trip
            res = handoff(gen, size=target)
        else:
            res = upscale(gen.image, upscaler, size=target, device=device, progress=progress,
                          full_result=True, **upscaler_options(upscaler, gen))
        params = dict(gen.params, upscaler=res.model, upscale_by=float(res.scale),
                      upscale_size=f"{res.size[0]}x{res.size[1]}")
        out.append(GeneratedImage(res.image, gen.seed, params))
    return out
