"""Model presets as data, scheduler names, and size arithmetic (aspect presets, rounding).

A preset is a Hub repo plus the settings that make it look its best; nothing here loads a model.

>>> get_preset("sdxl-turbo").steps, get_preset("sdxl-turbo").guidance
(1, 0.0)
>>> size_for_aspect("portrait", "absolute-reality")
(512, 768)
"""
from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass

from ..errors import InvalidParameterError, UnknownModelError
from ..refine_plan import GIB, generation_peak_bytes
from ..samplers import SCHEDULERS
from ..validation import check_int

__all__ = ["PHOTO_NEGATIVE", "BASE_NEGATIVE", "Preset", "PRESETS", "DEFAULT_PRESET", "BUILT_IN",
           "ASPECTS", "MAX_SIDE", "list_presets", "planned_peak_gib", "register_preset", "find_preset", "get_preset",
           "round_to", "resolve_size", "parse_aspect", "size_for_aspect"]

log = logging.getLogger(__name__)

PHOTO_NEGATIVE = ("cartoon, anime, painting, illustration, drawing, 3d render, worst quality, "
                  "low quality, blurry, deformed, disfigured, bad anatomy, bad hands, extra limbs, "
                  "extra fingers, duplicate, cloned face, watermark, text, signature")
BASE_NEGATIVE = "worst quality, low quality, blurry, deformed, watermark, text"


@dataclass(frozen=True)
class Preset:
    """Everything needed to load a model and run it with good defaults."""

    name: str
    repo: str  # Hub id, local diffusers folder or single .safetensors/.ckpt file
    pipeline_class: str  # diffusers class name, e.g. "StableDiffusionPipeline"
    steps: int
    guidance: float
    size: tuple[int, int]  # default (width, height)
    scheduler: str = "default"  # key of samplers.SCHEDULERS
    negative_prompt: str = ""
    multiple: int = 8  # generated sides are rounded to this
    vae: str | None = None  # replacement VAE repo (for "noVAE" checkpoints)
    variant: str | None = None  # weight variant to prefer on fp16 ("fp16")
    refiner: str | None = None  # SDXL refiner repo; base hands over at high_noise_frac
    high_noise_frac: float = 0.8
    step_range: tuple[int, int] = (1, 150)  # recommended; outside it we warn
    config: str | None = None  # local diffusers folder for single-file checkpoints
    description: str = ""
    license: str = ""  # the weights' licence, as on their model card

    @property
    def area(self) -> int:
        return self.size[0] * self.size[1]


_OPENRAIL = "CreativeML-OpenRAIL-M"
#: ``Preset.repo`` of the tiny pipelines that generate/stand_ins.py builds on first use
BUILT_IN = "built-in"
_OPENRAIL_XL = "CreativeML-OpenRAIL++-M"


def _sd15(name: str, repo: str, **kw) -> Preset:
    # SD-1.5 fine-tunes carry SD-1.5's licence (its use restrictions bind derivatives)
    base = dict(pipeline_class="StableDiffusionPipeline", steps=30, guidance=7.0,
                size=(512, 768), scheduler="dpm++2m-karras", negative_prompt=PHOTO_NEGATIVE,
                license=_OPENRAIL)
    base.update(kw)
    return Preset(name, repo, **base)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    # AbsoluteReality: the author's own diffusers upload (Lykon/absolute-reality-1.81, v1.8.1,
    # found with the Hub search; Lykon publishes and maintains it, it ships an fp16 variant and its
    # card recommends DEIS/DPM++ at 25-30 steps). digiplay/AbsoluteReality_v1.8.1 is a community
    # mirror of the same weights if that one ever disappears.
    _sd15("absolute-reality", "Lykon/absolute-reality-1.81", variant="fp16", guidance=6.5,
          description="AbsoluteReality 1.8.1 (SD-1.5 fine-tune): photoreal people; seed 000's model"),
    _sd15("realistic-vision-v6", "SG161222/Realistic_Vision_V6.0_B1_noVAE",
          vae="stabilityai/sd-vae-ft-mse", guidance=5.0, scheduler="dpm++2m-sde-karras",
          description="Realistic Vision 6.0 B1 (SD-1.5) with the sd-vae-ft-mse VAE it expects"),
    _sd15("epicrealism", "emilianJR/epiCRealism", guidance=5.5,
          description="epiCRealism (SD-1.5): natural light, skin texture"),
    _sd15("cyberrealistic-v3", "emilianJR/CyberRealistic_V3",
          description="CyberRealistic 3 (SD-1.5): photoreal portraits"),
    Preset("sdxl-base", "stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline",
           steps=30, guidance=7.0, size=(1024, 1024), negative_prompt=BASE_NEGATIVE, multiple=64,
           variant="fp16", license=_OPENRAIL_XL, description="SDXL 1.0 base at 1024²"),
    Preset("sdxl-base-refiner", "stabilityai/stable-diffusion-xl-base-1.0",
           "StableDiffusionXLPipeline", steps=40, guidance=7.0, size=(1024, 1024),
           negative_prompt=BASE_NEGATIVE, multiple=64, variant="fp16",
           refiner="stabilityai/stable-diffusion-xl-refiner-1.0", high_noise_frac=0.8,
           license=_OPENRAIL_XL,
           description="SDXL base for the first 80 % of the noise, then the SDXL refiner"),
    Preset("sdxl-turbo", "stabilityai/sdxl-turbo", "StableDiffusionXLPipeline", steps=1,
           guidance=0.0, size=(512, 512), multiple=64, variant="fp16", step_range=(1, 4),
           license="sai-nc-community (non-commercial)",
           description="SDXL Turbo: 1-4 steps, no guidance, 512² (seed 002's final choice)"),
    Preset("sd-1.4", "CompVis/stable-diffusion-v1-4", "StableDiffusionPipeline", steps=30,
           guidance=7.5, size=(512, 512), scheduler="dpm++2m-karras",
           negative_prompt=BASE_NEGATIVE, license=_OPENRAIL, description="Stable Diffusion 1.4"),
    # runwayml/stable-diffusion-v1-5 was taken down; this is the maintained official mirror.
    Preset("sd-1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline",
           steps=30, guidance=7.5, size=(512, 512), scheduler="dpm++2m-karras",
           negative_prompt=BASE_NEGATIVE, variant="fp16", license=_OPENRAIL,
           description="Stable Diffusion 1.5"),
    Preset("sd-2.1", "stabilityai/stable-diffusion-2-1", "StableDiffusionPipeline", steps=30,
           guidance=7.5, size=(768, 768), scheduler="dpm++2m-karras",
           negative_prompt=BASE_NEGATIVE, variant="fp16", license=_OPENRAIL_XL,
           description="Stable Diffusion 2.1 (v-prediction, 768²)"),
    # built on first use by generate/stand_ins.py (no download); listed so people find it
    Preset("tiny-random", BUILT_IN, "StableDiffusionPipeline", steps=2, guidance=5.0,
           size=(64, 64), license="MIT (random weights made by pipeline_lib.testing)",
           description="random weights, makes NOISE: an offline smoke test"),
]}

DEFAULT_PRESET = "absolute-reality"

# name → (diffusers class, extra config, A1111 sampler label). "default" keeps the model's own.
ASPECTS: dict[str, tuple[int, int]] = {
    "square": (1, 1), "portrait": (2, 3), "portrait-3:4": (3, 4), "portrait-9:16": (9, 16),
    "landscape": (3, 2), "landscape-4:3": (4, 3), "landscape-16:9": (16, 9),
}

MAX_SIDE = 4096  # larger generations do not fit 16 GB and repeat subjects; upscale instead


def planned_peak_gib(preset: Preset) -> float | None:
    """The planned GPU peak of one image at the preset's default size, fp16, balanced profile
    (see :func:`pipeline_lib.refine_plan.generation_peak_bytes`; a base+refiner preset with one
    UNet resident); None for the built-in tiny stand-in, which the SD-1.5 table does not size."""
    if preset.repo == BUILT_IN:
        return None
    return round(generation_peak_bytes(preset, memory="balanced") / GIB, 1)


def list_presets() -> list[dict]:
    """The presets as rows (name, repo, steps, guidance, size, scheduler, ...,
    ``planned_peak_gib``: the planned GPU peak, see :func:`planned_peak_gib`).

    >>> "sdxl-turbo" in [p["name"] for p in list_presets()]
    True
    """
    return [{"name": p.name, "repo": p.repo, "pipeline_class": p.pipeline_class, "steps": p.steps,
             "guidance": p.guidance, "size": p.size, "scheduler": p.scheduler, "vae": p.vae,
             "refiner": p.refiner, "multiple": p.multiple, "license": p.license,
             "description": p.description, "planned_peak_gib": planned_peak_gib(p)}
            for p in PRESETS.values()]


def register_preset(preset: Preset, *, replace: bool = False) -> Preset:
    """Add a preset (e.g. a local checkpoint with its settings); refuses to shadow one silently."""
    key = preset.name.strip().lower()
    if key in PRESETS and not replace:
        raise InvalidParameterError(f"preset {key!r} exists already; pass replace=True to change it.")
    if preset.scheduler not in SCHEDULERS:
        raise InvalidParameterError(f"preset {key!r}: unknown scheduler {preset.scheduler!r}; use "
                                    f"one of {', '.join(SCHEDULERS)}.")
    PRESETS[key] = preset
    return preset


def find_preset(name: str) -> Preset | None:
    return PRESETS.get(str(name).strip().lower())


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`UnknownModelError` with close matches otherwise."""
    preset = find_preset(name)
    if preset is None:
        close = difflib.get_close_matches(str(name).strip().lower(), list(PRESETS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model preset {name!r}.{hint} Presets: {', '.join(PRESETS)}; you can also "
            "pass a Hub repo id ('owner/name'), a local diffusers folder or a .safetensors/.ckpt file.")
    return preset


# ------------------------------------------------------------------ sizes
def _side(value, what: str) -> int:
    v = check_int(value, what, 1, unit="pixel")
    if v > MAX_SIDE:
        raise InvalidParameterError(
            f"{what}={v} is larger than {MAX_SIDE}: diffusion models repeat subjects and run out of "
            "memory that large. Generate at the model's size and use text_to_image(size=...) or "
            "upscale() to reach big outputs.")
    return v


def round_to(v: float, multiple: int) -> int:
    return max(multiple, int(math.floor(v / multiple + 0.5)) * multiple)


def resolve_size(width, height, default: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Final ``(w, h)``: defaults filled in (one side given → the default aspect is kept), then
    rounded to ``multiple`` with a logged warning when that changed what was asked."""
    dw, dh = default
    if width is None and height is None:
        w, h = dw, dh
    elif height is None:
        w = _side(width, "width")
        h = w * dh / dw
    elif width is None:
        h = _side(height, "height")
        w = h * dw / dh
    else:
        w, h = _side(width, "width"), _side(height, "height")
    rw, rh = round_to(w, multiple), round_to(h, multiple)
    asked = (width, height)
    if None not in asked and (rw, rh) != (w, h):
        log.warning("size %dx%d is not a multiple of %d for this model; generating %dx%d instead",
                    w, h, multiple, rw, rh)
    return rw, rh


def parse_aspect(aspect: str) -> tuple[int, int]:
    key = str(aspect).strip().lower()
    if key in ASPECTS:
        return ASPECTS[key]
    parts = key.replace("/", ":").split(":")
    if len(parts) == 2:
        try:
            a, b = int(parts[0]), int(parts[1])
        except ValueError:
            a = b = 0
        if a > 0 and b > 0:
            return a, b
    raise InvalidParameterError(f"unknown aspect {aspect!r}; use one of {', '.join(ASPECTS)} or "
                                "a ratio like '4:5'.")


def size_for_aspect(aspect: str, model: str | None = None, *, area: int | None = None,
                    multiple: int | None = None) -> tuple[int, int]:
    """``(w, h)`` with the aspect's ratio and about the model's default pixel count, rounded to its
    multiple — so people come out neither stretched nor duplicated.

    >>> size_for_aspect("portrait", "sdxl-base")
    (832, 1280)
    """
    rw, rh = parse_aspect(aspect)
    preset = find_preset(model) if model else None
    if area is not None:
        area = check_int(area, "area", 1, MAX_SIDE ** 2,
                         hint=f"pixels, e.g. 512*512; at most {MAX_SIDE ** 2}")
    if multiple is not None:
        multiple = check_int(multiple, "multiple", 1, 256,
                             hint="the side multiple: 8 for SD-1.x, 64 for SDXL")
    area = area or (preset.area if preset else 512 * 512)
    multiple = multiple or (preset.multiple if preset else 8)
    w = math.sqrt(area * rw / rh)
    return round_to(w, multiple), round_to(w * rh / rw, multiple)
