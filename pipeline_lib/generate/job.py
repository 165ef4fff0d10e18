"""One call's settings after the preset's defaults are filled in, and what it hands the pipeline:
text conditioning (plain text, or compel embeddings for weighted/long prompts), one CPU
generator per image, a progress callback that counts across passes."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InvalidParameterError
from ..validation import check_int, check_strength
from .adapters import check_embeddings, check_loras
from .pipeline import Loaded
from .presets import resolve_size
from .prompts import encode_prompts, extract_lora_tags, needs_encoder, parse_attention, plain_text

__all__ = ["Job", "Hires", "Extras", "check_extras", "check_hires_needs_scale", "fill_defaults",
           "model_defaults", "conditioning", "generators", "step_callback", "MAX_CLIP_SKIP",
           "MAX_HIRES_SCALE", "HIRES_LATENT"]

log = logging.getLogger(__name__)

MAX_CLIP_SKIP = 12
MAX_HIRES_SCALE = 4.0
HIRES_LATENT = "latent"


@dataclass(frozen=True)
class Hires:
    """A1111's hires fix: ``scale`` × the base size, repainted at ``strength``."""

    scale: float
    strength: float = 0.35
    steps: int | None = None
    upscaler: str = HIRES_LATENT


@dataclass
class Extras:
    """Options beyond txt2img's basics: LoRAs, embeddings, clip skip, hires fix."""

    loras: list[tuple[str, float]] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    clip_skip: int | None = None
    hires: Hires | None = None


def check_extras(loras=None, embeddings=None, clip_skip=None, hires_scale=None,
                 hires_strength=0.35, hires_steps=None, hires_upscaler=HIRES_LATENT) -> Extras:
    clip_skip = None if clip_skip is None else check_int(
        clip_skip, "clip_skip", 1, MAX_CLIP_SKIP, hint="A1111's Clip skip: 1 = last layer, 2 = "
        "the one before (many anime models)")
    hires = None
    if hires_scale is not None and float(hires_scale) != 1.0:
        from ..validation import check_float

        scale = check_float(hires_scale, "hires_scale", 1.0, MAX_HIRES_SCALE, low_open=True,
                            hint="1.5-2 is usual")
        strength = check_strength(hires_strength, "hires_strength")
        steps = None if hires_steps in (None, 0) else check_int(hires_steps, "hires_steps", 1, 1000)
        if not isinstance(hires_upscaler, str) or not hires_upscaler.strip():
            raise InvalidParameterError("hires_upscaler must be 'latent' or an upscaler name "
                                        f"(see list_upscalers()), got {hires_upscaler!r}.")
        hires = Hires(scale, strength, steps, hires_upscaler.strip())
    return Extras(check_loras(loras), check_embeddings(embeddings), clip_skip, hires)


def check_hires_needs_scale(hires_scale, **hires_fields) -> None:
    """``hires_strength``/``hires_steps``/``hires_upscaler`` act only with ``hires_scale``: a front
    end that passes only what its user set refuses them alone instead of ignoring them silently."""
    given = sorted(k for k, v in hires_fields.items() if v is not None)
    if hires_scale is None and given:
        raise InvalidParameterError(f"{', '.join(given)} without hires_scale does nothing; set "
                                    "hires_scale (e.g. 2) to turn the hires fix on, or leave "
                                    f"{'them' if len(given) > 1 else 'it'} out.")


@dataclass
class Job:
    """The settings of one call after defaults from the preset/model are filled in."""

    prompt: str  # as asked, <lora:...> tags included
    negative: str
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str
    seed: int
    num_images: int
    model_name: str
    extras: Extras = field(default_factory=Extras)
    text: str = ""  # the prompt without its <lora:...> tags
    tag_loras: list[tuple[str, float]] = field(default_factory=list)

    @property
    def all_loras(self) -> list[tuple[str, float]]:
        return self.extras.loras + self.tag_loras


def model_defaults(loaded: Loaded) -> tuple[tuple[int, int], int]:
    """((width, height) when none is asked for, the multiple sizes round to)."""
    preset, pipe = loaded.preset, loaded.pipe
    if preset is not None:
        return preset.size, preset.multiple
    side = pipe.unet.config.sample_size * getattr(pipe, "vae_scale_factor", 8)
    return (side, side), (64 if "XL" in type(pipe).__name__ else 8)


def fill_defaults(loaded: Loaded, prompt: str, negative_prompt, steps, guidance, width, height,
                  scheduler, seed: int, num_images: int, extras: Extras | None = None) -> Job:
    preset = loaded.preset
    default_size, multiple = model_defaults(loaded)
    w, h = resolve_size(width, height, default_size, multiple)
    steps = steps if steps is not None else (preset.steps if preset else 30)
    if preset and not preset.step_range[0] <= steps <= preset.step_range[1]:
        log.warning("%s works best with %d-%d steps; %d asked for", preset.name, *preset.step_range, steps)
    text, tag_loras = extract_lora_tags(prompt)
    return Job(prompt=prompt,
               negative=negative_prompt if negative_prompt is not None else (
                   preset.negative_prompt if preset else ""),
               steps=steps,
               guidance=guidance if guidance is not None else (preset.guidance if preset else 7.0),
               width=w, height=h, scheduler=scheduler or (preset.scheduler if preset else "default"),
               seed=seed, num_images=num_images, model_name=preset.name if preset else loaded.name,
               extras=extras or Extras(), text=text, tag_loras=tag_loras)


def conditioning(pipe, job: Job) -> dict[str, Any]:
    """What the pipeline gets for the text: the plain prompt when nothing is weighted, it fits the
    encoder and there is no clip skip (the pipeline's own encoding: identical pixels to before
    weighting existed), compel embeddings otherwise. Clip skip counts as A1111 does: 2 reads
    the layer before the last (diffusers' ``clip_skip=1``)."""
    positive, negative = parse_attention(job.text), parse_attention(job.negative)
    clip_skip = job.extras.clip_skip or 1
    # clip skip also goes through compel: diffusers' own (SD-1.x) reaches for
    # text_encoder.text_model, which transformers 5's CLIPTextModel no longer has
    if clip_skip > 1 or needs_encoder(pipe, positive, negative):
        return encode_prompts(pipe, positive, negative, clip_skip, job.num_images)
    kwargs: dict[str, Any] = {"prompt": [plain_text(positive)] * job.num_images}
    if job.negative and job.guidance > 1:
        kwargs["negative_prompt"] = [plain_text(negative)] * job.num_images
    return kwargs


def generators(seed: int, count: int) -> list:
    """One CPU generator per image: the same seed gives the same noise on any device, and image
    i of a batch equals a single run with seed + i."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def step_callback(on_progress: Callable[[int, int], object] | None, done_before: int,
                  steps: int, total: int):
    """A ``callback_on_step_end`` reporting ``(done_before + step, total)``; None without one."""
    if on_progress is None:
        return None

    def _step_end(_pipe, index, _timestep, callback_kwargs):
        on_progress(min(done_before + index + 1, done_before + steps, total), total)
        return callback_kwargs

    return _step_end
