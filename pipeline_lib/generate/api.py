"""``generate()``: text → photoreal pictures with diffusers, each with its seed and parameters.

Written the way diffusers writes ``__call__``: check the inputs, then numbered steps.

>>> from pipeline_lib import generate
>>> img = generate("portrait of an old fisherman, golden hour", seed=42)[0]   # doctest: +SKIP
>>> img.seed, img.image.size                                               # doctest: +SKIP
(42, (512, 768))
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import GenerationOutOfMemoryError, InvalidParameterError
from ..heap import reuse_freed_memory
from ..memory import prepare_vae
from ..metadata import GENERATE_KEYS, format_parameters
from ..samplers import check_scheduler, scheduler_of
from ..validation import check_callback, check_guidance, check_int, check_seed, check_text
from ..version import __version__
from .oom import free_after_oom, is_out_of_memory, oom_advice
from .pipeline import Loaded, get_loaded, get_refiner, set_scheduler
from .presets import DEFAULT_PRESET, resolve_size

__all__ = ["GeneratedImage", "generate", "MAX_IMAGES"]

log = logging.getLogger(__name__)

MAX_IMAGES = 64


@dataclass
class GeneratedImage:
    """One generated picture: ``image`` (PIL), its ``seed`` and everything needed to make it again.

    ``params`` holds prompt, negative_prompt, steps, guidance, seed, width, height, model and
    scheduler (``generate(**img.generate_kwargs())`` re-creates it), plus upscaler details when
    it came from :func:`text_to_image`.
    """

    image: Any
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def generate_kwargs(self) -> dict[str, Any]:
        return {k: self.params[k] for k in GENERATE_KEYS if k in self.params}

    def parameters_text(self) -> str:
        """The A1111 ``parameters`` text for this image."""
        return format_parameters(self.params)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save atomically with the A1111 ``parameters`` text (PNG); never overwrites unless asked.

        >>> img.save("out/fisherman.png")                        # doctest: +SKIP
        """
        from ..images import save_image

        dest = Path(path)
        if dest.suffix.lower() != ".png":
            log.warning("%s: only PNG keeps the generation parameters; use .png to keep them", dest)
        return save_image(self.image, dest, metadata={"parameters": self.parameters_text()},
                          overwrite=overwrite)


@dataclass
class _Job:
    """The settings of one call after defaults from the preset/model are filled in."""

    prompt: str
    negative: str
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str
    seed: int
    num_images: int
    model_name: str
    model_hash: str | None = None


def _warn_if_truncated(pipe, prompt: str, what: str) -> None:
    """Say out loud what CLIP will silently drop: the pipeline keeps only the first
    ``model_max_length`` tokens (we let it cut, so the kept tokens are exactly the first ones)."""
    tok = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
    if tok is None or not prompt:
        return
    limit = tok.model_max_length
    ids = tok(prompt, truncation=False, add_special_tokens=True, verbose=False).input_ids
    if len(ids) <= limit:
        return
    kept = tok.decode(ids[1:limit - 1], skip_special_tokens=True).strip()
    log.warning("%s is %d tokens, longer than the model's limit of %d; it is truncated to: %r "
                "(move the important words to the front)", what, len(ids), limit, kept)


def _fill_defaults(loaded: Loaded, model, prompt: str, negative_prompt, steps, guidance, width,
                   height, scheduler, seed: int, num_images: int) -> _Job:
    pipe, preset = loaded.pipe, loaded.preset
    if preset is not None:
        default_size, multiple = preset.size, preset.multiple
    else:
        side = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
        default_size, multiple = (side, side), (64 if "XL" in type(pipe).__name__ else 8)
    w, h = resolve_size(width, height, default_size, multiple)
    steps = steps if steps is not None else (preset.steps if preset else 30)
    if preset and not preset.step_range[0] <= steps <= preset.step_range[1]:
        log.warning("%s works best with %d-%d steps; %d asked for", preset.name, *preset.step_range, steps)
    return _Job(prompt=prompt,
                negative=negative_prompt if negative_prompt is not None else (
                    preset.negative_prompt if preset else ""),
                steps=steps,
                guidance=guidance if guidance is not None else (preset.guidance if preset else 7.0),
                width=w, height=h, scheduler=scheduler or (preset.scheduler if preset else "default"),
                seed=seed, num_images=num_images,
                model_name=preset.name if preset else loaded.name)


def _pipeline_kwargs(loaded: Loaded, job: _Job, on_progress) -> dict[str, Any]:
    import torch

    # One CPU generator per image: the same seed gives the same noise on any device, and image i
    # of a batch equals a single run with seed + i.
    generators = [torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.num_images)]
    kwargs: dict[str, Any] = dict(prompt=[job.prompt] * job.num_images, num_inference_steps=job.steps,
                                  guidance_scale=job.guidance, width=job.width, height=job.height,
                                  generator=generators)
    if job.negative and job.guidance > 1:
        kwargs["negative_prompt"] = [job.negative] * job.num_images
    if on_progress is not None:
        preset = loaded.preset
        total = round(job.steps * preset.high_noise_frac) if preset and preset.refiner else job.steps

        def _step_end(_pipe, index, _timestep, callback_kwargs):
            on_progress(min(index + 1, total), total)
            return callback_kwargs

        kwargs["callback_on_step_end"] = _step_end
    return kwargs


def _denoise(loaded: Loaded, kwargs: dict, output_type: str, progress: bool):
    """Run the pipeline (and, for a base+refiner preset, the refiner on its latents)."""
    import torch

    # reuse_freed_memory: on CPU the UNet's activations otherwise cost a page fault per 4 KiB
    with torch.inference_mode(), reuse_freed_memory():
        preset = loaded.preset
        if preset is None or not preset.refiner:
            return loaded.pipe(**kwargs, output_type=output_type).images
        frac = preset.high_noise_frac
        latents = loaded.pipe(**kwargs, denoising_end=frac, output_type="latent").images
        refiner = get_refiner(loaded, progress)
        return refiner(prompt=kwargs["prompt"], negative_prompt=kwargs.get("negative_prompt"),
                       image=latents, num_inference_steps=kwargs["num_inference_steps"],
                       guidance_scale=kwargs["guidance_scale"], denoising_start=frac,
                       generator=kwargs["generator"], output_type=output_type).images


def _run_or_explain_oom(loaded: Loaded, job: _Job, kwargs: dict, output_type: str, progress: bool):
    oom = None
    try:
        return _denoise(loaded, kwargs, output_type, progress)
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        oom = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # raised outside the handler, so the traceback frees the tensors
    free_after_oom(loaded.plan.device)
    raise GenerationOutOfMemoryError(oom_advice(oom, loaded.plan, job.num_images, job.width,
                                                job.height))


def _results(images, job: _Job, loaded: Loaded) -> list[GeneratedImage]:
    # "default" is the model's own scheduler: record which one that is, in A1111's words
    scheduler = job.scheduler
    if scheduler == "default":
        scheduler = scheduler_of(loaded.original_scheduler) or "default"
    out = []
    for i, img in enumerate(images):
        params = {"prompt": job.prompt, "negative_prompt": job.negative, "steps": job.steps,
                  "guidance": job.guidance, "seed": job.seed + i, "width": job.width,
                  "height": job.height, "model": job.model_name, "scheduler": scheduler,
                  "version": f"pipeline_lib {__version__}"}
        if loaded.model_hash:
            params["model_hash"] = loaded.model_hash
        out.append(GeneratedImage(img, job.seed + i, params))
    return out


def generate(prompt: str, *, model: str = DEFAULT_PRESET, negative_prompt: str | None = None,
             steps: int | None = None, guidance: float | None = None, width: int | None = None,
             height: int | None = None, seed: int | None = None, num_images: int = 1,
             scheduler: str | None = None, device=None, memory: str = "auto", dtype=None,
             progress: bool = True, output_type: str = "pil", channels_last: bool | None = None,
             fuse_qkv: bool | None = None, compile: bool | None = None, xformers: bool = False,
             on_progress: Callable[[int, int], object] | None = None) -> list[GeneratedImage]:
    """Generate ``num_images`` pictures for ``prompt``; each carries its seed and parameters.

    ``model`` is a preset (:func:`list_presets`), a Hub repo id, a diffusers folder or a
    ``.safetensors`` file; unset ``steps``/``guidance``/size/``scheduler``/``negative_prompt``
    come from the preset. Sizes are rounded to the model's multiple (8, SDXL 64) with a warning.
    ``seed=None`` picks one; image *i* uses ``seed + i``, so any image of a batch can be re-made
    alone (batched matmuls may round a last bit differently: a level off on a few values).
    ``memory`` is 'auto', 'fast', 'balanced' or 'low' (see :mod:`pipeline_lib.memory`). ``dtype``
    None is fp16 on a GPU and fp32 on a CPU; 'bf16' needs native bf16 (Ampere+ GPU; CPU with
    AVX512-BF16, AMX or Arm BF16, where it is 1.75-3× faster than fp32 and changes pixels
    slightly). ``output_type="latent"`` skips the VAE decode: each ``image`` is then the
    4×h/8×w/8 latent tensor (for a latent upscaler such as sd-x2-latent). ``channels_last`` /
    ``fuse_qkv`` (None: on for CUDA, off on CPU) and ``compile=True`` (UNet ``torch.compile``;
    None reads ``PIPELINE_LIB_COMPILE``; pays only over many images) are speed options, same
    images. ``xformers=True`` uses xformers attention when it is installed (PyTorch SDPA
    otherwise). ``on_progress(done, total)`` is called after every denoising step.

    Raises :class:`InvalidParameterError` for impossible values and
    :class:`UnknownModelError` for an unknown preset (with suggestions).

    >>> imgs = generate("a lighthouse at dusk", model="sdxl-turbo", seed=1, num_images=2)  # doctest: +SKIP
    >>> [i.seed for i in imgs]                                                          # doctest: +SKIP
    [1, 2]
    """
    # 1. check the inputs
    check_text(prompt, "prompt")
    check_text(negative_prompt, "negative_prompt", optional=True)
    num_images = check_int(num_images, "num_images", 1, MAX_IMAGES)
    steps = None if steps is None else check_int(steps, "steps", 1, 1000)
    guidance = None if guidance is None else check_guidance(guidance)
    scheduler = check_scheduler(scheduler)
    if output_type not in ("pil", "latent"):
        raise InvalidParameterError(f"output_type must be 'pil' or 'latent', got {output_type!r}.")
    check_callback(on_progress)
    seed = check_seed(seed, num_images)
    # 2. load the pipeline (cached) and fill in the preset's defaults
    loaded = get_loaded(model, device=device, memory=memory, dtype=dtype, progress=progress,
                        channels_last=channels_last, fuse_qkv=fuse_qkv, compile=compile,
                        xformers=xformers)
    job = _fill_defaults(loaded, model, prompt, negative_prompt, steps, guidance, width, height,
                         scheduler, seed, num_images)
    # 3. prepare the pipeline for this job
    set_scheduler(loaded, job.scheduler)
    prepare_vae(loaded.pipe, loaded.plan, job.width, job.height, num_images)
    loaded.pipe.set_progress_bar_config(disable=not progress, leave=False, desc="denoise")
    _warn_if_truncated(loaded.pipe, prompt, "prompt")
    _warn_if_truncated(loaded.pipe, job.negative, "negative prompt")
    # 4. denoise
    t0 = time.perf_counter()
    images = _run_or_explain_oom(loaded, job, _pipeline_kwargs(loaded, job, on_progress),
                                 output_type, progress)
    log.info("generated %d image(s) %dx%d with %s in %.1fs (seed %d)", num_images, job.width,
             job.height, job.model_name, time.perf_counter() - t0, seed)
    # 5. one GeneratedImage per picture, with everything needed to make it again
    return _results(images, job, loaded)
