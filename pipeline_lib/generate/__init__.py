"""Text → photoreal image with diffusers, and prompt → 2048² in one call.

>>> from pipeline_lib import generate, text_to_image
>>> img = generate("portrait of an old fisherman, golden hour", seed=42)[0]   # doctest: +SKIP
>>> img.seed, img.image.size                                               # doctest: +SKIP
(42, (512, 768))
>>> big = text_to_image("portrait of an old fisherman", size=2048)[0]      # doctest: +SKIP
>>> big.image.size                                                         # doctest: +SKIP
(1365, 2048)
"""
from __future__ import annotations

import logging
import math
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import GenerationOutOfMemoryError, InvalidParameterError
from ..heap import reuse_freed_memory
from .memory import prepare_vae
from .pipeline import (current_pipeline, get_loaded, get_refiner, load_pipeline, move_off_gpu, set_scheduler,
                       unload_pipeline)
from .presets import (DEFAULT_PRESET, PRESETS, Preset, check_scheduler, get_preset, list_presets,
                      register_preset, resolve_size, size_for_aspect)

__all__ = ["generate", "text_to_image", "load_pipeline", "unload_pipeline", "current_pipeline", "GeneratedImage",
           "list_presets", "register_preset", "get_preset", "size_for_aspect", "Preset", "PRESETS",
           "MAX_SEED"]

log = logging.getLogger(__name__)

#: Seeds are 32-bit, like A1111 and ComfyUI, so a seed copied from either reproduces here.
MAX_SEED = 2 ** 32 - 1
UPSCALE_HEADROOM = 3 * 1024 ** 3  # free GPU bytes the upscaler wants; less → park the pipeline


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
        from ..metadata import GENERATE_KEYS

        return {k: self.params[k] for k in GENERATE_KEYS if k in self.params}

    def parameters_text(self) -> str:
        """The A1111 ``parameters`` text for this image."""
        from ..metadata import format_parameters

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


def _check_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise InvalidParameterError(f"{name} must be a whole number, got {value!r}.")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f"{low}..{high}" if high is not None else f"≥ {low}"
        raise InvalidParameterError(f"{name} must be in {rng}, got {v}.")
    return v


def _check_guidance(g) -> float:
    try:
        v = float(g)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"guidance must be a number, got {g!r}.") from None
    if not math.isfinite(v) or v < 0 or v > 50:
        raise InvalidParameterError(f"guidance must be a finite number in 0..50 (typical 4-9; 0 for "
                                    f"turbo models), got {g!r}.")
    return v


def _check_seed(seed, num_images: int) -> int:
    if seed is None:
        return secrets.randbelow(MAX_SEED - num_images + 2)
    if isinstance(seed, bool) or not isinstance(seed, int) and not hasattr(seed, "__index__"):
        raise InvalidParameterError(f"seed must be a whole number in 0..{MAX_SEED} (2**32-1), got {seed!r}.")
    s = int(seed)
    if s < 0 or s + num_images - 1 > MAX_SEED:
        raise InvalidParameterError(
            f"seed must be in 0..{MAX_SEED} (2**32-1, as in A1111) and a batch of {num_images} uses "
            f"seed..seed+{num_images - 1}; got seed={s}.")
    return s


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
    ``memory`` is 'auto', 'fast', 'balanced' or 'low' (see memory.py). ``dtype`` None is
    fp16 on a GPU and fp32 on a CPU; 'bf16' needs native bf16 (Ampere+ GPU; CPU with AVX512-BF16,
    AMX or Arm BF16, where it is 1.75-3× faster than fp32 and changes pixels slightly).
    ``output_type="latent"`` skips the VAE decode: each ``image`` is then the 4×h/8×w/8 latent
    tensor (for a latent upscaler such as sd-x2-latent). ``channels_last`` / ``fuse_qkv``
    (None: on for CUDA, off on CPU) and ``compile=True`` (UNet ``torch.compile``; None reads
    ``PIPELINE_LIB_COMPILE``; pays only over many images) are speed options, same images.
    ``xformers=True`` uses xformers attention when it is installed (``pip install
    pipeline_lib[xformers]``; PyTorch SDPA otherwise). ``on_progress(done, total)`` is called after every denoising step (live progress for front ends).

    Raises :class:`InvalidParameterError` for impossible values and
    :class:`UnknownModelError` for an unknown preset (with suggestions).

    >>> imgs = generate("a lighthouse at dusk", model="sdxl-turbo", seed=1, num_images=2)  # doctest: +SKIP
    >>> [i.seed for i in imgs]                                                          # doctest: +SKIP
    [1, 2]
    """
    import torch

    if not isinstance(prompt, str):
        raise InvalidParameterError(f"prompt must be text, got {type(prompt).__name__}.")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InvalidParameterError(f"negative_prompt must be text or None (the preset's), got "
                                    f"{type(negative_prompt).__name__}.")
    num_images = _check_int(num_images, "num_images", 1, 64)
    if steps is not None:
        steps = _check_int(steps, "steps", 1, 1000)
    if guidance is not None:
        guidance = _check_guidance(guidance)
    scheduler = check_scheduler(scheduler)
    if output_type not in ("pil", "latent"):
        raise InvalidParameterError(f"output_type must be 'pil' or 'latent', got {output_type!r}.")
    base_seed = _check_seed(seed, num_images)

    loaded = get_loaded(model, device=device, memory=memory, dtype=dtype, progress=progress,
                        channels_last=channels_last, fuse_qkv=fuse_qkv, compile=compile,
                        xformers=xformers)
    pipe, preset = loaded.pipe, loaded.preset
    xl = "XL" in type(pipe).__name__
    if preset is not None:
        default_size, multiple = preset.size, preset.multiple
    else:
        side = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
        default_size, multiple = (side, side), (64 if xl else 8)
    w, h = resolve_size(width, height, default_size, multiple)
    steps = steps if steps is not None else (preset.steps if preset else 30)
    guidance = guidance if guidance is not None else (preset.guidance if preset else 7.0)
    if preset and not preset.step_range[0] <= steps <= preset.step_range[1]:
        log.warning("%s works best with %d-%d steps; %d asked for", preset.name, *preset.step_range, steps)
    scheduler = scheduler or (preset.scheduler if preset else "default")
    negative = negative_prompt if negative_prompt is not None else (preset.negative_prompt if preset else "")
    set_scheduler(loaded, scheduler)
    prepare_vae(pipe, loaded.plan, w, h, num_images)
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="denoise")
    _warn_if_truncated(pipe, prompt, "prompt")
    _warn_if_truncated(pipe, negative, "negative prompt")

    # One CPU generator per image: the same seed gives the same noise on any device, and image i
    # of a batch equals a single run with seed + i.
    generators = [torch.Generator("cpu").manual_seed(base_seed + i) for i in range(num_images)]
    kwargs: dict[str, Any] = dict(prompt=[prompt] * num_images, num_inference_steps=steps,
                                  guidance_scale=guidance, width=w, height=h, generator=generators)
    if negative and guidance > 1:
        kwargs["negative_prompt"] = [negative] * num_images
    if on_progress is not None:
        if not callable(on_progress):
            raise InvalidParameterError(f"on_progress must be a function (done, total), got "
                                        f"{on_progress!r}.")
        total = round(steps * preset.high_noise_frac) if preset and preset.refiner else steps

        def _step_end(_pipe, index, _timestep, callback_kwargs):
            on_progress(min(index + 1, total), total)
            return callback_kwargs

        kwargs["callback_on_step_end"] = _step_end
    t0 = time.perf_counter()
    oom = None
    try:
        # reuse_freed_memory: on CPU the UNet's activations otherwise cost a page fault per 4 KiB
        with torch.inference_mode(), reuse_freed_memory():
            if preset is not None and preset.refiner:
                frac = preset.high_noise_frac
                latents = pipe(**kwargs, denoising_end=frac, output_type="latent").images
                refiner = get_refiner(loaded, progress)
                images = refiner(prompt=kwargs["prompt"], negative_prompt=kwargs.get("negative_prompt"),
                                 image=latents, num_inference_steps=steps, guidance_scale=guidance,
                                 denoising_start=frac, generator=generators,
                                 output_type=output_type).images
            else:
                images = pipe(**kwargs, output_type=output_type).images
    except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not _is_out_of_memory(exc):
            raise
        oom = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if oom is not None:  # raised outside the handler, so the traceback frees the tensors
        _free_after_oom(loaded.plan.device)
        raise GenerationOutOfMemoryError(_oom_advice(oom, loaded.plan, num_images, w, h))
    seconds = time.perf_counter() - t0
    model_name = preset.name if preset else str(model)
    log.info("generated %d image(s) %dx%d with %s in %.1fs (seed %d)", num_images, w, h,
             model_name, seconds, base_seed)
    results = []
    for i, img in enumerate(images):
        params = {"prompt": prompt, "negative_prompt": negative, "steps": steps, "guidance": guidance,
                  "seed": base_seed + i, "width": w, "height": h, "model": model_name,
                  "scheduler": scheduler, "version": _version()}
        results.append(GeneratedImage(img, base_seed + i, params))
    return results


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text
            or "not enough memory" in text or "can't allocate memory" in text)


def _free_after_oom(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _oom_advice(what: str, plan, num_images: int, w: int, h: int) -> str:
    """The message: what ran out, then the settings that lower the peak, biggest effect first."""
    tips = []
    if plan.profile not in ("low", "cpu"):  # on the CPU the profiles change nothing
        tips.append("memory='low' (CLI: --memory low; offloads sub-models and slices attention)")
    if num_images > 1:
        tips.append(f"fewer images per call (num_images=1 instead of {num_images}; CLI: -n 1)")
    tips.append(f"a smaller size than {w}x{h} (width=/height=, CLI: --size), then reach big "
                "outputs with text_to_image(size=...) / --upscale")
    if plan.device != "cpu":
        tips.append("device='cpu' (slow, but limited by RAM only)")
    return (f"out of {plan.device} memory generating {num_images} image(s) of {w}x{h} "
            f"(memory profile {plan.profile!r}): {what}. Try " + "; or ".join(tips) + ".")


def _version() -> str:
    from .. import __version__

    return f"pipeline_lib {__version__}"


def text_to_image(prompt: str, *, model: str = DEFAULT_PRESET, upscaler: str = "realesrgan-x4plus",
                  size: int | tuple[int, int] | str = 2048, **generate_kwargs) -> list[GeneratedImage]:
    """Generate, then upscale each picture to ``size``: an int is the long side (aspect kept:
    512×768 → 1365×2048), ``(w, h)`` is exact. A diffusion upscaler (sd-x4, sd-x2-latent) gets
    the image's prompt and seed; ``upscaler="sd-x2-latent"`` after an SD-1.x/2.x model takes the
    latents directly (no VAE decode/encode), then further passes/resizing reach ``size``. The diffusion model is moved off the GPU first when
    the two would not fit together. Each result's ``params`` adds upscaler, upscale_by and
    upscale_size; ``generate(**result.generate_kwargs())`` re-makes the un-upscaled picture.

    >>> out = text_to_image("a red fox in snow", model="sdxl-turbo", size=2048)[0]  # doctest: +SKIP
    >>> out.image.size                                                           # doctest: +SKIP
    (2048, 2048)
    """
    from ..upscale import upscale
    from ..upscale.sizing import parse_size

    from ..upscale import resolve_model

    target = parse_size(size)
    if target is None:
        raise InvalidParameterError("size must be a long side (e.g. 2048) or (width, height).")
    resolve_model(upscaler)  # an unknown upscaler fails now, not after minutes of generation
    progress = generate_kwargs.get("progress", True)
    device = generate_kwargs.get("device")
    from ..upscale.diffusion import latent_handoff, upscaler_options

    handoff = latent_handoff(model, upscaler, generate_kwargs)
    images = generate(prompt, model=model, output_type="latent" if handoff else "pil",
                      **generate_kwargs)
    _make_room()
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


def _make_room() -> None:
    from .. import devices
    from .pipeline import current_pipeline

    cur = current_pipeline()
    if cur is None or not cur.plan.device.startswith("cuda"):
        return
    import torch

    free = devices.free_memory(torch.device(cur.plan.device))
    if free is not None and free < UPSCALE_HEADROOM:
        move_off_gpu()
