"""Diffusion upscalers: Stable Diffusion x4 (pixel-conditioned) and the x2 latent upscaler.

Both are diffusers pipelines (``StableDiffusionUpscalePipeline``,
``StableDiffusionLatentUpscalePipeline``) loaded once per process with the generation code's
memory profiles (fp16 on CUDA, model CPU offload on small GPUs, VAE tiling on GPUs). ``run`` takes
per-call options (``prompt``, ``negative_prompt``, ``steps``, ``guidance``, ``noise_level``,
``seed``) so they never enter the model-load cache key.

Any input size works: each tile is padded (reflect, or edge for tiny tiles) to the multiple the
model needs and the output cropped back. ``upscale_latents`` feeds SD-1.x latents straight to the
x2 latent upscaler (no VAE decode/encode round trip).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidParameterError, TileOutOfMemoryError, UnknownModelError, WeightsError
from ...hub import hub_access
from ...memory import dtype_kwargs
from ...validation import MAX_SEED, check_guidance, check_int
from ..registry import ModelSpec
from .base import BACKENDS, Upscaler

__all__ = ["load", "upscale_latents", "accepts_latents", "check_run_options", "RUN_OPTIONS", "KINDS",
           "DiffusionModel"]

log = logging.getLogger(__name__)

X4, LATENT = "StableDiffusionUpscalePipeline", "StableDiffusionLatentUpscalePipeline"
#: Per pipeline class: native scale and the defaults of the per-call options (the model cards'
#: recommendations: x4 with CFG 9 and noise_level 20, the latent upscaler without CFG).
KINDS = {X4: {"scale": 4, "steps": 25, "guidance": 9.0, "noise_level": 20},
         LATENT: {"scale": 2, "steps": 20, "guidance": 0.0, "noise_level": None}}
RUN_OPTIONS = BACKENDS["diffusion"].run_options
LOAD_OPTIONS = frozenset({"memory"})
# Input tile side for the x4 model: at fp16 a 256² tile (UNet at 256², VAE decode to 1024², tiled)
# stays well under 16 GB; 128² when less than ~10 GB is free.
X4_TILE_BIG, X4_TILE_SMALL = 256, 128


@dataclass
class DiffusionModel:
    """What a loaded diffusion upscaler runs (``Upscaler.native``)."""

    pipe: Any
    kind: str  # X4 or LATENT
    multiple: int  # input pixel multiple the UNet needs
    plan: Any  # the memory plan it was loaded with


def _source(target: ModelSpec | str | Path) -> tuple[str, str, str]:
    """(source for from_pretrained, pipeline class name, display name)."""
    if isinstance(target, ModelSpec):
        return target.repo, target.pipeline, target.name
    folder = Path(target)
    index = folder / "model_index.json"
    if not index.is_file():
        raise UnknownModelError(f"{folder} is not a diffusers pipeline folder (no model_index.json).")
    cls = json.loads(index.read_text())["_class_name"]
    if cls not in KINDS:
        raise UnknownModelError(f"{folder} holds a {cls}; the diffusion upscaler backend runs "
                                f"{X4} (sd-x4) or {LATENT} (sd-x2-latent) folders only.")
    return str(folder.resolve()), cls, str(folder)


def _from_pretrained(source: str, cls_name: str, dtype, progress: bool):
    import diffusers

    cls = getattr(diffusers, cls_name)
    if not progress:
        diffusers.utils.logging.disable_progress_bar()
    hub = {} if Path(source).is_dir() else hub_access(source, "diffusion upscaler")
    try:
        if dtype == torch.float16 and not Path(source).is_dir():
            try:
                return cls.from_pretrained(source, **dtype_kwargs(dtype), variant="fp16", **hub)
            except (OSError, ValueError) as exc:
                log.info("no fp16 variant of %s (%s); loading the full-precision files", source, exc)
        return cls.from_pretrained(source, **dtype_kwargs(dtype), **hub)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"could not load the diffusion upscaler {source!r}: {exc}; check the "
                           "repo id or folder.") from exc
    finally:
        if not progress:
            diffusers.utils.logging.enable_progress_bar()


def _multiple(pipe, kind: str) -> int:
    """Pixel multiple the model needs: every UNet level halves the size (the latent upscaler's
    UNet runs on VAE latents, so its multiple is in latent pixels × the VAE factor)."""
    unet = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return unet * (pipe.vae_scale_factor if kind == LATENT else 1)


def _pad(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad bottom/right up to ``multiple``: reflect (no hard edge for the model to sharpen),
    edge-replicate where the tile is too small to reflect."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


def check_run_options(kind: str, max_noise: int | None, prompt="", negative_prompt=None,
                      steps=None, guidance=None, noise_level=None, seed=None) -> dict:
    """Validate per-call options and fill defaults; raises :class:`InvalidParameterError`."""
    d = KINDS[kind]
    if not isinstance(prompt, str) or (negative_prompt is not None and not isinstance(negative_prompt, str)):
        raise InvalidParameterError("prompt and negative_prompt must be text.")
    if noise_level is not None and kind == LATENT:
        raise InvalidParameterError("noise_level applies to sd-x4 only; the x2 latent upscaler "
                                    "has no noise-level input.")
    return {"prompt": prompt, "negative_prompt": negative_prompt or None,
            "steps": check_int(d["steps"] if steps is None else steps, "steps", 1, 1000),
            "guidance": check_guidance(d["guidance"] if guidance is None else guidance),
            "noise_level": (None if kind == LATENT else check_int(
                d["noise_level"] if noise_level is None else noise_level, "noise_level", 0, max_noise)),
            # an upscaler should be repeatable by default: no seed means seed 0, not a random one
            "seed": check_int(0 if seed is None else seed, "seed", 0, MAX_SEED)}


def _call(pipe, kind: str, image: torch.Tensor, o: dict) -> torch.Tensor:
    """Run the pipeline on an N×C×h×w tensor (pixels 0..1, or SD latents); N×3×H×W in 0..1."""
    n = image.shape[0]
    kwargs = dict(prompt=[o["prompt"]] * n, image=image, num_inference_steps=o["steps"],
                  guidance_scale=o["guidance"], output_type="pt",
                  # one CPU generator per image: the same seed gives the same noise on any device
                  generator=[torch.Generator("cpu").manual_seed(o["seed"]) for _ in range(n)])
    if o["negative_prompt"] and o["guidance"] > 1:
        kwargs["negative_prompt"] = [o["negative_prompt"]] * n
    if kind == X4:
        kwargs["noise_level"] = o["noise_level"]
    try:
        return pipe(**kwargs).images
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise TileOutOfMemoryError(f"out of GPU memory on a {tuple(image.shape[-2:])} input") from None


def _default_tile(kind: str, device: str) -> int:
    if kind == LATENT:
        return 0  # whole image: the latent upscaler is cheap (it runs at latent resolution)
    from ...devices import free_memory

    free = free_memory(torch.device(device))
    return X4_TILE_BIG if free is None or free >= 10 * 1024 ** 3 else X4_TILE_SMALL


def load(target: ModelSpec | str | Path, device=None, dtype=None, progress: bool = True,
         memory: str = "auto", **options) -> Upscaler:
    """Load an x4 / x2-latent upscaler (registry spec or local diffusers folder) once."""
    from ...memory import apply_plan, plan_memory

    unknown = set(options) - LOAD_OPTIONS
    if unknown:
        raise InvalidParameterError(f"the diffusion backend takes no load options {sorted(unknown)} "
                                    f"(per-call options: {', '.join(sorted(RUN_OPTIONS))}).")
    source, kind, name = _source(target)
    plan = plan_memory(memory, device, dtype=dtype)
    pipe = _from_pretrained(source, kind, plan.torch_dtype, progress)
    if type(pipe).__name__ != kind:
        raise WeightsError(f"{source} loaded as {type(pipe).__name__}, expected {kind}.")
    apply_plan(pipe, plan)
    if plan.profile != "cpu":
        pipe.vae.enable_tiling()  # the x4 VAE decodes 4× the tile: 1024² at once otherwise
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc=f"{name} steps")
    multiple = _multiple(pipe, kind)
    max_noise = getattr(pipe.config, "max_noise_level", None)
    exec_device = torch.device(plan.device)

    @torch.inference_mode()
    def run(batch: np.ndarray, **opts) -> np.ndarray:
        o = check_run_options(kind, max_noise, **opts)
        x, h, w = _pad(torch.from_numpy(batch).to(exec_device, plan.torch_dtype), multiple)
        y = _call(pipe, kind, x, o)
        s = KINDS[kind]["scale"]
        return y[..., : h * s, : w * s].float().clamp_(0, 1).cpu().numpy()

    def release() -> None:
        if not plan.offload:
            pipe.to("cpu")
        if exec_device.type == "cuda":
            torch.cuda.empty_cache()

    return Upscaler(name=name, backend="diffusion", scale=KINDS[kind]["scale"], run=run,
                    device=plan.device, dtype=plan.dtype, default_tile=_default_tile(kind, plan.device),
                    release=release, run_options=RUN_OPTIONS, architecture=kind, weights=source,
                    native=DiffusionModel(pipe, kind, multiple, plan))


def accepts_latents(up: Upscaler) -> bool:
    """True for an x2 latent upscaler (it can take SD-1.x/2.x latents directly)."""
    return up.backend == "diffusion" and up.native.kind == LATENT


@torch.inference_mode()
def upscale_latents(up: Upscaler, latents: torch.Tensor, **opts) -> np.ndarray:
    """SD latents (N×4×h×w, as ``pipe(output_type="latent")`` returns them) → N×3×2·8h×2·8w
    float32 pixels in 0..1, without decoding them first. Latents are padded to the UNet's
    multiple (reflect) and the picture cropped back."""
    if not accepts_latents(up):
        raise InvalidParameterError(f"{up.name} does not take latents; use sd-x2-latent.")
    model: DiffusionModel = up.native
    pipe = model.pipe
    o = check_run_options(LATENT, None, **opts)
    if latents.ndim == 3:
        latents = latents[None]
    if latents.shape[1] != pipe.vae.config.latent_channels:
        raise InvalidParameterError(f"latents have {latents.shape[1]} channels; the latent "
                                    f"upscaler wants {pipe.vae.config.latent_channels} (SD-1.x/2.x).")
    plan = model.plan
    x, h, w = _pad(latents.to(plan.device, plan.torch_dtype),
                   max(1, model.multiple // pipe.vae_scale_factor))
    y = _call(pipe, LATENT, x, o)
    s = 2 * pipe.vae_scale_factor
    return y[..., : h * s, : w * s].float().clamp_(0, 1).cpu().numpy()

