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
from ..multi_gpu import ProgressSum, choose_devices, run_on_devices, split_counts
from ..samplers import check_scheduler, scheduler_of
from ..validation import check_callback, check_guidance, check_int, check_seed, check_text
from ..version import __version__
from .adapters import Applied, applied
from .job import HIRES_LATENT, Job, check_extras, conditioning, fill_defaults, generators, step_callback
from .oom import free_after_oom, is_out_of_memory, oom_advice
from .passes import hires_pass, hires_run_steps, hires_size
from .pipeline import Loaded, get_loaded, get_refiner, pipeline_slot, resident_unet, set_scheduler
from .presets import DEFAULT_PRESET
from .prompts import parse_attention, plain_text

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


def _denoise(loaded: Loaded, job: Job, kwargs: dict, output_type: str, progress: bool):
    """Run the pipeline (and, for a base+refiner preset, the refiner on its latents)."""
    import torch

    # reuse_freed_memory: on CPU the UNet's activations otherwise cost a page fault per 4 KiB
    with torch.inference_mode(), reuse_freed_memory():
        preset = loaded.preset
        if preset is None or not preset.refiner:
            return loaded.pipe(**kwargs, output_type=output_type).images
        frac = preset.high_noise_frac
        resident_unet(loaded, "base")  # on a small GPU only the UNet in use is resident
        latents = loaded.pipe(**kwargs, denoising_end=frac, output_type="latent").images
        refiner = get_refiner(loaded, progress)
        resident_unet(loaded, "refiner")
        # the refiner has only the second text encoder: it reads the plain text
        text = plain_text(parse_attention(job.text))
        negative = plain_text(parse_attention(job.negative)) if job.negative else None
        return refiner(prompt=[text] * job.num_images,
                       negative_prompt=[negative] * job.num_images if negative else None,
                       image=latents, num_inference_steps=kwargs["num_inference_steps"],
                       guidance_scale=kwargs["guidance_scale"], denoising_start=frac,
                       generator=kwargs["generator"], output_type=output_type).images


def _explain_oom(fn: Callable, loaded: Loaded, job: Job):
    """``fn()``, with an out-of-memory error turned into advice (and the memory freed)."""
    oom = None
    try:
        return fn()
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        oom = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # raised outside the handler, so the traceback frees the tensors
    free_after_oom(loaded.plan.device)
    raise GenerationOutOfMemoryError(oom_advice(oom, loaded.plan, job.num_images, job.width,
                                                job.height))


def _first_pass_total(loaded: Loaded, job: Job) -> int:
    preset = loaded.preset
    return round(job.steps * preset.high_noise_frac) if preset and preset.refiner else job.steps


def _run(loaded: Loaded, job: Job, output_type: str, progress: bool, on_progress) -> tuple:
    """Both passes with the LoRAs and embeddings on; returns (images, what was applied)."""
    hires = job.extras.hires
    first_total = _first_pass_total(loaded, job)
    total = first_total + (hires_run_steps(job) if hires else 0)
    first_type = output_type if hires is None else (
        "latent" if hires.upscaler.lower() == HIRES_LATENT else "pil")
    with applied(loaded.pipe, job.all_loras, job.extras.embeddings, job.text, job.negative) as used:
        cond = conditioning(loaded.pipe, job)
        kwargs: dict[str, Any] = dict(cond, num_inference_steps=job.steps,
                                      guidance_scale=job.guidance, width=job.width,
                                      height=job.height, generator=generators(job.seed, job.num_images))
        callback = step_callback(on_progress, 0, first_total, total)
        if callback is not None:
            kwargs["callback_on_step_end"] = callback
        images = _explain_oom(lambda: _denoise(loaded, job, kwargs, first_type, progress), loaded, job)
        if hires is not None:
            images = _explain_oom(lambda: hires_pass(loaded, job, cond, images, output_type, progress,
                                                     on_progress, first_total), loaded, job)
    return images, used


def _results(images, job: Job, loaded: Loaded, used: Applied) -> list[GeneratedImage]:
    # "default" is the model's own scheduler: record which one that is, in A1111's words
    scheduler = job.scheduler
    if scheduler == "default":
        scheduler = scheduler_of(loaded.original_scheduler) or "default"
    extras = job.extras
    common: dict[str, Any] = {"prompt": job.prompt, "negative_prompt": job.negative,
                              "steps": job.steps, "guidance": job.guidance, "width": job.width,
                              "height": job.height, "model": job.model_name, "scheduler": scheduler,
                              "version": f"pipeline_lib {__version__}"}
    if loaded.model_hash:
        common["model_hash"] = loaded.model_hash
    if extras.loras:
        common["loras"] = list(extras.loras)
    if used.lora_hashes:
        common["lora_hashes"] = dict(used.lora_hashes)
    if extras.embeddings:
        common["embeddings"] = list(extras.embeddings)
    if used.ti_hashes:
        common["ti_hashes"] = dict(used.ti_hashes)
    if extras.clip_skip and extras.clip_skip > 1:
        common["clip_skip"] = extras.clip_skip
    if extras.hires is not None:
        common.update(hires_scale=extras.hires.scale, hires_strength=extras.hires.strength,
                      hires_steps=extras.hires.steps, hires_upscaler=extras.hires.upscaler)
    return [GeneratedImage(img, job.seed + i, dict(common, seed=job.seed + i))
            for i, img in enumerate(images)]


def generate(prompt: str, *, model: str = DEFAULT_PRESET, negative_prompt: str | None = None,
             steps: int | None = None, guidance: float | None = None, width: int | None = None,
             height: int | None = None, seed: int | None = None, num_images: int = 1,
             scheduler: str | None = None, loras=None, embeddings=None,
             clip_skip: int | None = None, hires_scale: float | None = None,
             hires_strength: float = 0.35, hires_steps: int | None = None,
             hires_upscaler: str = HIRES_LATENT, device=None, devices=None, memory: str = "auto",
             dtype=None,
             progress: bool = True, output_type: str = "pil", channels_last: bool | None = None,
             fuse_qkv: bool | None = None, compile: bool | None = None, xformers: bool = False,
             on_progress: Callable[[int, int], object] | None = None) -> list[GeneratedImage]:
    r"""Generate ``num_images`` pictures for ``prompt``; each carries its seed and parameters.

    ``model`` is a preset (:func:`list_presets`), a Hub repo id, a diffusers folder or a
    ``.safetensors`` file; unset ``steps``/``guidance``/size/``scheduler``/``negative_prompt``
    come from the preset. Sizes are rounded to the model's multiple (8, SDXL 64) with a warning.
    ``seed=None`` picks one; image *i* uses ``seed + i``, so any image of a batch can be re-made
    alone (batched matmuls may round a last bit differently: a level off on a few values).

    Prompts use A1111's syntax: ``(word)``, ``((word))``, ``(word:1.3)``, ``[word]``, ``\(``;
    prompts past 77 tokens are encoded in 75-token chunks (nothing is cut), and
    ``<lora:name:0.8>`` loads ``name`` from ``PIPELINE_LIB_LORA_DIR``. ``loras=[(path_or_repo_or_url,
    weight), ...]`` adds LoRAs (kohya or diffusers layout); ``embeddings=[file or name, ...]`` adds
    textual inversions, each active only where its token (the file's stem) is in a prompt. Both
    are taken off again when the call ends. ``clip_skip`` is A1111's Clip skip (1 = off).
    ``hires_scale=2`` is A1111's hires fix: the picture is made at the base size, upscaled
    (``hires_upscaler="latent"`` or any upscaler name) and repainted with img2img at
    ``hires_strength`` (0 < s ≤ 1) for ``hires_steps`` (None: ``steps``) × strength steps; the
    output is ``hires_scale`` × the base size, and ``params`` keep the base size.

    ``memory`` is 'auto', 'fast', 'balanced' or 'low' (see :mod:`pipeline_lib.memory`). ``dtype``
    None is fp16 on a GPU and fp32 on a CPU; 'bf16' needs native bf16 (Ampere+ GPU; CPU with
    AVX512-BF16, AMX or Arm BF16). ``output_type="latent"`` skips the VAE decode: each ``image``
    is then the 4×h/8×w/8 latent tensor (for a latent upscaler such as sd-x2-latent).
    ``channels_last`` / ``fuse_qkv`` (None: on for CUDA, off on CPU) and ``compile=True`` (UNet
    ``torch.compile``) are speed options, same images. ``xformers=True`` uses xformers attention
    when it is installed. ``on_progress(done, total)`` is called after every denoising step
    (both passes counted in one total).

    ``devices=["cuda:0", "cuda:1"]`` (or ``"cuda:0,cuda:1"``, or ``"auto"``: every usable GPU,
    e.g. Kaggle's T4 ×2) splits ``num_images`` over the devices, each running its own copy of
    the pipeline at the same time; image *i* still uses ``seed + i`` and the order is kept.
    Use ``device`` or ``devices``, not both.

    Raises :class:`InvalidParameterError` for impossible values and
    :class:`UnknownModelError` for an unknown preset or LoRA (with suggestions).

    >>> imgs = generate("a (lighthouse:1.2) at dusk", model="sdxl-turbo", seed=1, num_images=2)  # doctest: +SKIP
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
    extras = check_extras(loras, embeddings, clip_skip, hires_scale, hires_strength, hires_steps,
                          hires_upscaler)
    load = dict(model=model, memory=memory, dtype=dtype, progress=progress,
                channels_last=channels_last, fuse_qkv=fuse_qkv, compile=compile, xformers=xformers)
    ask = dict(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
               width=width, height=height, scheduler=scheduler, extras=extras)
    devs = choose_devices(device, devices)
    if len(devs) > 1 and num_images > 1:  # 2. split the batch over the devices
        return _split(ask, load, devs, seed, num_images, output_type, progress, on_progress)
    return _generate_on(ask, dict(load, device=devs[0]), seed, num_images, output_type,
                        progress, on_progress)


def _split(ask: dict, load: dict, devs: list, seed: int, num_images: int, output_type: str,
           progress: bool, on_progress) -> list[GeneratedImage]:
    """Images 0..k-1 on the first device, k.. on the next, at once (image i keeps seed + i):
    each device's own pipeline (its slot), one progress total over all of them."""
    counts = split_counts(num_images, len(devs))
    firsts = [sum(counts[:i]) for i in range(len(counts))]
    log.info("generating %d images on %s (%s each)", num_images, ", ".join(devs[:len(counts)]),
             "/".join(map(str, counts)))
    with ProgressSum(len(counts), on_progress, progress) as total:
        def work(index: int, dev) -> list[GeneratedImage]:
            with pipeline_slot(index):
                return _generate_on(ask, dict(load, device=dev), seed + firsts[index],
                                    counts[index], output_type, False, total.part(index))

        parts = run_on_devices(work, devs[:len(counts)])
    return [img for part in parts for img in part]


def _generate_on(ask: dict, load: dict, seed: int, num_images: int, output_type: str,
                 bar: bool, on_progress) -> list[GeneratedImage]:
    """Steps 2-5 of :func:`generate` on one device (this thread's pipeline slot)."""
    extras = ask["extras"]
    # 2. load the pipeline (cached) and fill in the preset's defaults
    loaded = get_loaded(**load)
    job = fill_defaults(loaded, ask["prompt"], ask["negative_prompt"], ask["steps"],
                        ask["guidance"], ask["width"], ask["height"], ask["scheduler"], seed,
                        num_images, extras)
    # 3. prepare the pipeline for this job
    set_scheduler(loaded, job.scheduler)
    big = hires_size(job) if extras.hires else (job.width, job.height)
    prepare_vae(loaded.pipe, loaded.plan, *big, num_images)
    loaded.pipe.set_progress_bar_config(disable=not bar, leave=False, desc="denoise")
    # 4. denoise (and the hires pass), with the LoRAs/embeddings on for just this call
    t0 = time.perf_counter()
    images, used = _run(loaded, job, output_type, bar, on_progress)
    log.info("generated %d image(s) %dx%d with %s on %s in %.1fs (seed %d)", num_images, *big,
             job.model_name, loaded.plan.device, time.perf_counter() - t0, seed)
    # 5. one GeneratedImage per picture, with everything needed to make it again
    return _results(images, job, loaded, used)
