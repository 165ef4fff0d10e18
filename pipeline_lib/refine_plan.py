"""How much GPU memory generation and a tiled refine need: weights from parameter counts (one
table for both), activations, the VAE decode. Refine tiles run one at a time, so the canvas size
only adds its float32 copy in host RAM; the GPU peak is set by the tile size and the profile.

>>> plan = refine_memory_plan("sd15", size=(2048, 2048), memory="balanced")
>>> plan.tiles, plan.tile, plan.fits(16 * 1024 ** 3)
(25, 512, True)
>>> round(generation_peak_bytes("sdxl", size=(1024, 1024)) / GIB, 1)
8.8
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from .errors import InvalidParameterError
from .memory import TILE_VAE_PIXELS

__all__ = ["PARAMETERS", "RefinePlan", "refine_memory_plan", "family_of", "GIB",
           "generation_peak_bytes"]

log = logging.getLogger(__name__)

GIB = 1024 ** 3
#: Parameter counts per family (UNet, text encoders, VAE, tile ControlNet), from the released
#: checkpoints: SD-1.5 UNet 859.5 M, CLIP-L 123.1 M, VAE 83.7 M, control_v11f1e_sd15_tile 361.3 M;
#: SDXL UNet 2567.5 M, CLIP-L 123.1 M + OpenCLIP-bigG 694.7 M, VAE 83.7 M, a full-size tile
#: ControlNet 1251.4 M, the SDXL 1.0 refiner's UNet 2259.5 M. SD-2.x (UNet 865.9 M, OpenCLIP-H
#: 354 M) is planned with the SD-1.5 row: its peak differs by < 0.5 GiB.
PARAMETERS = {
    "sd15": {"unet": 859.5e6, "text": 123.1e6, "vae": 83.7e6, "controlnet": 361.3e6, "native": 512},
    "sdxl": {"unet": 2567.5e6, "text": 817.8e6, "vae": 83.7e6, "controlnet": 1251.4e6,
             "refiner_unet": 2259.5e6, "native": 1024},
}
# Activation peak of one UNet forward with CFG (batch 2), fp16, SDPA attention, per megapixel of
# tile. ESTIMATES (not yet measured here; no GPU was available): ~1.1 GiB at 512² for SD-1.5,
# ~3.6 GiB at 1024² for SDXL. Replace with torch.cuda.max_memory_allocated figures when measured.
_ACT_PER_MP = {"sd15": 4.2 * GIB, "sdxl": 3.4 * GIB}
_VAE_TILE_BYTES = 1.6 * GIB  # estimate: diffusers' tiled VAE (512² pixel tiles) peak, fp16
# estimate: an untiled fp16 VAE decode, per megapixel (~4 GiB at 1024²; images above
# TILE_VAE_PIXELS are decoded in tiles, one image at a time)
_VAE_DECODE_PER_MP = 3.8 * GIB
_CUDA_CONTEXT = 0.5 * GIB


@dataclass(frozen=True)
class RefinePlan:
    family: str
    size: tuple[int, int]
    tile: int
    overlap: int
    tiles: int
    memory: str
    parts: dict  # name → bytes on the GPU at the peak
    peak_bytes: int

    def fits(self, gpu_bytes: int) -> bool:
        return self.peak_bytes <= gpu_bytes

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in self.parts.items())
        return (f"refine plan ({self.family}, {self.memory}): {self.size[0]}x{self.size[1]} in "
                f"{self.tiles} tiles of {self.tile}px (overlap {self.overlap}), planned GPU peak "
                f"{self.peak_bytes / GIB:.1f} GiB ({parts} GiB)")


def _check_profile(memory: str) -> None:
    # the profiles a plan can be made for ("auto" is resolved per device by memory.plan_memory)
    if memory not in ("fast", "balanced", "low"):
        raise InvalidParameterError(f"memory must be 'fast', 'balanced' or 'low', got {memory!r}.")


def family_of(pipe_or_name) -> str:
    """'sdxl' or 'sd15' for a pipeline, a pipeline class name or a preset/family name."""
    if hasattr(pipe_or_name, "unet"):
        return "sdxl" if getattr(pipe_or_name, "text_encoder_2", None) is not None else "sd15"
    text = str(pipe_or_name).lower()
    return "sdxl" if "xl" in text else "sd15"


def _count(pipe, name: str) -> float | None:
    module = getattr(pipe, name, None)
    return float(sum(p.numel() for p in module.parameters())) if module is not None else None


def _parameters(family: str, pipe=None) -> dict:
    counts = dict(PARAMETERS[family])
    if pipe is not None:  # a loaded pipeline counts its own weights
        counts["unet"] = _count(pipe, "unet") or counts["unet"]
        counts["vae"] = _count(pipe, "vae") or counts["vae"]
        counts["text"] = sum(filter(None, (_count(pipe, "text_encoder"),
                                           _count(pipe, "text_encoder_2")))) or counts["text"]
    return counts


def refine_memory_plan(model="sd15", *, size=(2048, 2048), tile: int | None = None,
                       overlap: int | None = None, memory: str = "balanced",
                       controlnet: bool = False, pipe=None, bytes_per_param: int = 2) -> RefinePlan:
    """The planned GPU peak of ``refine`` at ``size`` (fp16 weights by default).

    ``fast`` keeps every sub-model on the GPU; ``balanced`` (model CPU offload) only the running
    one — the UNet (+ ControlNet) while denoising, the VAE while coding; ``low`` streams layers
    (weights ≈ one block)."""
    _check_profile(memory)
    family = family_of(pipe if pipe is not None else model)
    counts = _parameters(family, pipe)
    tile = tile or counts["native"]
    overlap = overlap if overlap is not None else max(8, tile // 8)
    step = max(tile - overlap, 1)
    tiles = math.ceil(max(size[1] - overlap, 1) / step) * math.ceil(max(size[0] - overlap, 1) / step)
    denoiser = (counts["unet"] + (counts["controlnet"] if controlnet else 0)) * bytes_per_param
    weights = {"fast": (counts["unet"] + counts["text"] + counts["vae"]) * bytes_per_param
               + (counts["controlnet"] * bytes_per_param if controlnet else 0),
               "balanced": denoiser, "low": 0.1 * denoiser}[memory]
    act = _ACT_PER_MP[family] * tile * tile / 1e6 * (1.3 if controlnet else 1.0)
    parts = {"weights": int(weights), "activations": int(act),
             "vae": int(_VAE_TILE_BYTES if memory != "balanced" else 0),
             "cuda": int(_CUDA_CONTEXT)}
    # balanced: the VAE runs alone (the UNet is back in RAM), so its peak is not added
    peak = sum(parts.values())
    if memory == "balanced":
        peak = max(peak, int(counts["vae"] * bytes_per_param + _VAE_TILE_BYTES + _CUDA_CONTEXT))
    return RefinePlan(family, tuple(size), tile, overlap, tiles, memory, parts, int(peak))


def _vae_peak(width: int, height: int) -> float:
    pixels = width * height
    return _VAE_TILE_BYTES if pixels > TILE_VAE_PIXELS else _VAE_DECODE_PER_MP * pixels / 1e6


def _generation_parts(family: str, size, memory: str, num_images: int, cfg: bool,
                      refiner: bool, both_unets: bool, bpp: int) -> dict:
    """name → bytes of each stage's GPU peak (balanced, low) or of the one resident set (fast)."""
    counts = PARAMETERS[family]
    unets = [counts["unet"]] + ([counts["refiner_unet"]] if refiner else [])
    act = _ACT_PER_MP[family] * size[0] * size[1] / 1e6 * num_images * (1.0 if cfg else 0.5)
    vae = _vae_peak(*size)  # batches are decoded one image at a time (VAE slicing)
    if memory == "fast":
        resident = (sum(unets) if both_unets else max(unets)) + counts["text"] + counts["vae"]
        return {"weights": resident * bpp + max(act, vae) + _CUDA_CONTEXT}
    scale = 0.1 if memory == "low" else 1.0  # low streams layers: about one block resident
    unet_weights = (sum(unets) if both_unets else max(unets)) * scale
    return {"text": counts["text"] * scale * bpp + _CUDA_CONTEXT,
            "unet": unet_weights * bpp + act + _CUDA_CONTEXT,
            "vae": counts["vae"] * scale * bpp + vae + _CUDA_CONTEXT}


def generation_peak_bytes(preset="sd15", *, size=None, memory: str = "balanced",
                          num_images: int = 1, both_unets: bool = False,
                          bytes_per_param: int = 2) -> int:
    """The planned GPU peak of ``generate`` (fp16 weights by default) for ``preset`` — a
    :class:`~pipeline_lib.generate.Preset` (its family, default size, guidance and refiner
    count) or a family name ('sd15', 'sdxl') — at ``size`` (default: the preset's).

    ``balanced`` (model CPU offload) holds one sub-model at a time: the peak is the UNet's
    weights plus its activations (CFG doubles the batch), or the VAE decode, whichever is
    larger. A base+refiner preset keeps one UNet resident (the idle one waits in RAM), so the
    larger UNet counts; ``both_unets=True`` plans both resident (SDXL's pair at 1024²: 13.1 GiB
    balanced, 15.2 GiB fast — more than a T4's 15 GiB). ``fast`` keeps every
    sub-model resident; ``low`` streams layers. Activation figures are estimates (no GPU
    measured them yet), within ~1 GiB."""
    _check_profile(memory)
    if isinstance(preset, str):
        family, refiner, cfg = family_of(preset), False, True
        default = (PARAMETERS[family]["native"],) * 2
    else:
        family = family_of(preset.pipeline_class)
        refiner, cfg, default = bool(preset.refiner), preset.guidance > 1, tuple(preset.size)
    size = tuple(size or default)
    parts = _generation_parts(family, size, memory, num_images, cfg, refiner, both_unets,
                              bytes_per_param)
    return int(max(parts.values()))
