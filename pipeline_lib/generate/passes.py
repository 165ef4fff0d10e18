"""Second passes over the cached pipeline: img2img (``from_pipe``: no second load, the same
modules and LoRAs), optionally with a ControlNet, and A1111's hires fix.

A pixel upscaler for the hires fix comes from outside this package (generate/ never imports
upscale/): :mod:`pipeline_lib.compose` registers one with :func:`register_pixel_upscaler` when
``pipeline_lib`` is imported.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

from ..errors import BackendUnavailableError, InvalidParameterError, WeightsError
from ..hub import hub_access
from .job import HIRES_LATENT, Job, generators, step_callback
from .pipeline import Loaded

__all__ = ["register_pixel_upscaler", "pixel_upscaler", "img2img_pipe", "run_img2img",
           "hires_size", "hires_dims", "hires_run_steps", "hires_pass", "load_controlnet", "CONTROLNET_TILE"]

log = logging.getLogger(__name__)

#: ``fn(images, name, scale, device, progress) -> images``: PIL images upscaled ``scale`` times.
PixelUpscaler = Callable[[list, str, float, Any, bool], list]
_UPSCALER: list[PixelUpscaler] = []

#: ControlNet tile models per family, for ``controlnet="tile"``.
CONTROLNET_TILE = {"sd": "lllyasviel/control_v11f1e_sd15_tile",
                   "sdxl": "xinsir/controlnet-tile-sdxl-1.0"}


def register_pixel_upscaler(fn: PixelUpscaler) -> PixelUpscaler:
    """Set the function the hires fix upscales pixels with (one; the last registration wins)."""
    _UPSCALER[:] = [fn]
    return fn


def pixel_upscaler() -> PixelUpscaler:
    if not _UPSCALER:
        raise BackendUnavailableError("no pixel upscaler is registered for the hires fix; "
                                      "`import pipeline_lib` registers one (pipeline_lib.compose), "
                                      "or use hires_upscaler='latent'.")
    return _UPSCALER[0]


def _family(pipe) -> str:
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


def load_controlnet(loaded: Loaded, controlnet):
    """A ControlNetModel: ``"tile"`` (the family's tile model), a repo id, a folder, or a model
    object; cached on ``loaded``."""
    if controlnet is None or not isinstance(controlnet, (str,)):
        return controlnet
    source = CONTROLNET_TILE[_family(loaded.pipe)] if controlnet == "tile" else controlnet
    if source not in loaded.controlnets:
        import diffusers

        try:
            model = diffusers.ControlNetModel.from_pretrained(
                source, dtype=loaded.plan.torch_dtype, **hub_access(source, "ControlNet", "config.json"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"could not load ControlNet {source!r}: {exc}") from exc
        loaded.controlnets.clear()  # one at a time: they are as big as a UNet
        loaded.controlnets[source] = model.to(loaded.plan.device)
    return loaded.controlnets[source]


def img2img_pipe(loaded: Loaded, controlnet=None):
    """The img2img pipeline sharing ``loaded``'s modules (no weights copied)."""
    import diffusers

    key = id(controlnet)
    if loaded.img2img is None or loaded.img2img[0] != key:
        extra = {"controlnet": controlnet} if controlnet is not None else {}
        pipe = diffusers.AutoPipelineForImage2Image.from_pipe(loaded.pipe, **extra)
        loaded.img2img = (key, pipe)
    pipe = loaded.img2img[1]
    pipe.scheduler = loaded.pipe.scheduler  # follow set_scheduler()
    return pipe


def run_img2img(loaded: Loaded, cond: dict, image, *, strength: float, steps: int, guidance: float,
                seed: int, count: int, output_type: str = "pil", controlnet=None,
                control_image=None, progress: bool = True, callback=None) -> list:
    """img2img on ``image`` (PIL, list of PIL, or a latent tensor) with ready text conditioning."""
    import torch

    from ..heap import reuse_freed_memory

    pipe = img2img_pipe(loaded, controlnet)
    # diffusers runs int(steps × strength) steps: keep at least one
    steps = max(steps, math.ceil(1 / strength - 1e-9))
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="img2img")
    kwargs = dict(cond, image=image, strength=strength, num_inference_steps=steps,
                  guidance_scale=guidance, generator=generators(seed, count),
                  output_type=output_type)
    if controlnet is not None:
        kwargs["control_image"] = control_image if control_image is not None else image
    if callback is not None:
        kwargs["callback_on_step_end"] = callback
    with torch.inference_mode(), reuse_freed_memory():
        return pipe(**kwargs).images


def hires_dims(width: int, height: int, scale: float) -> tuple[int, int]:
    """``scale`` × (``width``, ``height``), rounded to the VAE's multiple of 8."""
    return max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8)


def hires_size(job: Job) -> tuple[int, int]:
    """The hires pass's size: scale × base, rounded to the VAE's multiple of 8."""
    return hires_dims(job.width, job.height, job.extras.hires.scale)


def hires_run_steps(job: Job) -> int:
    """The steps img2img actually runs: A1111's hires steps (0/None: the base steps) × strength."""
    hires = job.extras.hires
    return max(1, int((hires.steps or job.steps) * hires.strength))


def _upscaled(loaded: Loaded, job: Job, first, progress: bool):
    import torch

    width, height = hires_size(job)
    hires = job.extras.hires
    if hires.upscaler.lower() == HIRES_LATENT:
        latents = first if isinstance(first, torch.Tensor) else torch.stack(list(first))
        return torch.nn.functional.interpolate(latents, size=(height // 8, width // 8),
                                               mode="bilinear", antialias=False)
    images = pixel_upscaler()(list(first), hires.upscaler, hires.scale, loaded.plan.device, progress)
    return [img if img.size == (width, height) else img.resize((width, height), 1)
            for img in images]  # 1 = LANCZOS


def hires_pass(loaded: Loaded, job: Job, cond: dict, first, output_type: str, progress: bool,
               on_progress=None, done_before: int = 0) -> list:
    """Upscale the first pass (latents, or pixels with the registered upscaler) and repaint it
    with img2img at ``hires.strength``, the same seed and text."""
    hires = job.extras.hires
    if hires is None:
        raise InvalidParameterError("hires_pass needs a job with hires settings.")
    image = _upscaled(loaded, job, first, progress)
    steps = hires.steps or job.steps
    total = done_before + hires_run_steps(job)
    callback = step_callback(on_progress, done_before, hires_run_steps(job), total)
    log.info("hires fix: %dx%d → %dx%d with %s, strength %.2f", job.width, job.height,
             *hires_size(job), hires.upscaler, hires.strength)
    return run_img2img(loaded, cond, image, strength=hires.strength, steps=steps,
                       guidance=job.guidance, seed=job.seed, count=job.num_images,
                       output_type=output_type, progress=progress, callback=callback)
