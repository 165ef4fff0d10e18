"""PyTorch backend: any architecture spandrel knows (ESRGAN/RRDBNet, SRVGG compact, SwinIR, ...)."""
from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...devices import resolve_device, resolve_dtype, supports_bf16, free_memory
from ...errors import InvalidParameterError, TileOutOfMemoryError, WeightsError
from .. import weights as W
from ..registry import ModelSpec
from . import Upscaler
from .mixed_bf16 import bf16_with_fp32_trunk
from .nearest_upconv import rewrite_nearest_upconv

__all__ = ["load_state_dict", "load"]

log = logging.getLogger(__name__)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without ever executing pickled code (safetensors, or weights_only pickles)."""
    from spandrel import canonicalize_state_dict

    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        elif suffix in (".pth", ".pt", ".ckpt", ".bin"):
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"{path}: unsupported weight file type {suffix!r}; use .pth, .pt, "
                               ".ckpt or .safetensors.")
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"{path}: refusing to load: the file holds pickled Python objects "
                           f"beyond plain tensors ({exc}). Re-save it as .safetensors.") from None
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc}); the file "
                           "is damaged or not a model. Delete it and fetch it again.") from None
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(sd).__name__}.")
    return canonicalize_state_dict(sd)


def _descriptor(sd: dict, source: str):
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        desc = ModelLoader().load_from_state_dict(sd)
    except UnsupportedModelError:
        hint = (" It looks like a Stable Diffusion checkpoint: use generate(model=...) for it."
                if any(k.startswith(("model.diffusion_model", "first_stage_model")) for k in sd) else "")
        raise WeightsError(f"{source}: not an upscaler architecture spandrel recognises.{hint}") from None
    except Exception as exc:
        raise WeightsError(f"{source}: weights do not fit their detected architecture ({exc}).") from None
    if not isinstance(desc, ImageModelDescriptor) or desc.purpose not in ("SR", "Restoration", "FaceSR"):
        raise WeightsError(f"{source}: {desc.architecture.name} is not an image-to-image upscaler.")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise WeightsError(f"{source}: {desc.architecture.name} takes {desc.input_channels} channels; "
                           "only RGB models are supported.")
    return desc


def _default_dtype(desc, device: torch.device) -> torch.dtype:
    if device.type == "cuda" and desc.supports_half:
        return torch.float16
    return torch.float32


def _per_px_bytes(desc, dtype) -> int:
    # ~ bytes per input pixel for RRDBNet-class models (peak activations, measured order of
    # magnitude), a safe upper bound for the lighter architectures
    return (24 if dtype == torch.float16 else 48) * 1024 // 16 * desc.scale ** 2


def _auto_tile(desc, device: torch.device, dtype: torch.dtype) -> int:
    free = free_memory(device)
    if free is None:
        return 256 if desc.architecture.name in ("ESRGAN",) else 384
    # keep half the free memory as head-room for the allocator and other models
    side = int(math.sqrt(free * 0.5 / _per_px_bytes(desc, dtype)))
    return max(64, min(1024, side // 32 * 32))


def _auto_batch(desc, device: torch.device, dtype: torch.dtype, tile: int) -> int:
    """Tiles per model call on a GPU: more than one only when the tile hit its 1024 cap and the
    same half of free memory holds several (big GPUs on big images); on CPU batching gains
    nothing measurable, and OOM back-off drops to 1 anyway."""
    free = free_memory(device)
    if free is None:
        return 1
    return max(1, min(8, int(free * 0.5 // (_per_px_bytes(desc, dtype) * tile * tile))))


def load(target: ModelSpec | str | Path, device=None, dtype=None, progress: bool = True,
         compile: bool = False, **options) -> Upscaler:
    """Load ``target`` (a registry spec, a local weight file or an https URL) with spandrel.

    ``compile=True`` wraps the model in ``torch.compile`` (fixed shapes: the tiler feeds one tile
    shape): it costs a compile per new shape (tens of seconds), so it pays on long GPU jobs only.
    """
    if options:
        raise InvalidParameterError(f"the torch backend takes no options {sorted(options)}; "
                                    "it takes compile=True/False.")
    if not isinstance(compile, bool):
        raise InvalidParameterError(f"compile must be True or False, got {compile!r}.")
    dev = resolve_device(device)
    if isinstance(target, ModelSpec):
        path, name = W.weights_path(target, progress=progress), target.name
    elif str(target).startswith(("https://", "http://")):
        path, name = W.fetch_url(str(target), progress=progress), str(target)
    else:
        path, name = Path(target), str(target)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weight file.")
    desc = _descriptor(load_state_dict(path), name)
    if isinstance(target, ModelSpec) and desc.scale != target.scale:
        raise WeightsError(f"{path}: detected x{desc.scale}, registry says x{target.scale}; "
                           "the cached file is wrong. Delete it and run again.")
    dt = resolve_dtype(dtype) or _default_dtype(desc, dev)
    if dt == torch.float16 and (dev.type == "cpu" or not desc.supports_half):
        log.warning("fp16 is not usable for %s on %s; using fp32", name, dev)
        dt = torch.float32
    if dt == torch.bfloat16 and not (desc.supports_bfloat16 and supports_bf16(dev)):
        log.warning("bf16 has no native support for %s on %s; using fp32", name, dev)
        dt = torch.float32
    elif (dtype is None and dev.type == "cpu" and desc.supports_bfloat16
          and supports_bf16(dev)):  # once per process: loads are cached
        log.info("this CPU computes bf16 natively: dtype='bf16' (--dtype bf16) ran x4plus 2-4× "
                 "faster than the fp32 default, at ~55 dB against it (bench/README.md)")
    module = desc.model.eval()  # still on the host: rewrite, then cast and move once
    esrgan_on_cpu = dev.type == "cpu" and desc.architecture.name == "ESRGAN"
    # same function, less work; measured on CPUs only (bench/README.md), so only applied there.
    # Before any cast, so the fused kernels are summed from the fp32 weights.
    fused_upconvs = rewrite_nearest_upconv(module) if esrgan_on_cpu else 0
    # bf16 convolutions, fp32 residual sums: 55.7-56.9 dB against fp32 instead of 53.2-54.4 for
    # the whole model in bf16, as fast within noise (bench/README.md); measured on CPUs only
    fp32_trunk = dt == torch.bfloat16 and esrgan_on_cpu and bf16_with_fp32_trunk(module)
    module = module.to(device=dev, dtype=None if fp32_trunk else dt)
    in_dt = torch.float32 if fp32_trunk else dt  # the dtype the model's first layer takes
    if dev.type in ("cuda", "cpu"):
        module = module.to(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # tiles share one shape, so autotuning pays off
    model = torch.compile(module, dynamic=False) if compile else module
    req = desc.size_requirements
    minimum, multiple = max(1, req.minimum), max(1, req.multiple_of)
    cuda = dev.type == "cuda"

    def forward(batch: np.ndarray) -> torch.Tensor:
        """The model on a float32 N×3×h×w batch; its output on the device, clamped to 0..1."""
        x = torch.from_numpy(batch)
        if cuda:  # page-locked staging makes the copy asynchronous and ~2× faster
            x = x.pin_memory()
        x = x.to(device=dev, non_blocking=True).to(dtype=in_dt)
        h, w = x.shape[-2:]
        ph = max(minimum, math.ceil(h / multiple) * multiple) - h
        pw = max(minimum, math.ceil(w / multiple) * multiple) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        try:
            y = model(x)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError too
            # CPU and MPS allocation failures are plain RuntimeErrors; they shrink tiles as well.
            text = str(exc).lower()
            if not (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text
                    or "not enough memory" in text or "can't allocate memory" in text):
                raise
            del x
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            raise TileOutOfMemoryError(f"out of {dev.type} memory on a {h}×{w} tile") from None
        if ph or pw:
            y = y[..., : h * desc.scale, : w * desc.scale]
        return y.clamp_(0, 1)

    def to_host(y: torch.Tensor) -> np.ndarray:
        if not cuda:
            return y.cpu().numpy()
        # pinned host buffers come from torch's caching host allocator, so this costs no
        # cudaHostAlloc per tile; the returned array keeps its buffer alive
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
        torch.cuda.current_stream(dev).synchronize()
        return host.numpy()

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return to_host(forward(batch).float())

    @torch.inference_mode()
    def run_whole(chw: np.ndarray) -> np.ndarray:
        # the same sums as upscale()'s host-side conversion (fp32 ×255, +0.5, clip, truncate),
        # so the bytes are identical; on a GPU this ships 1 byte per value instead of 4 and
        # spares the host a pass over the full-size float image (~70 ms at 2048² on 2 cores)
        y = forward(chw[None])[0].float().mul_(255.0).add_(0.5).clamp_(0, 255.0)
        return to_host(y.to(torch.uint8).permute(1, 2, 0).contiguous())

    def release() -> None:
        module.to("cpu")
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    tile = _auto_tile(desc, dev, dt)
    return Upscaler(
        name=name, backend="torch", scale=desc.scale, run=run, device=str(dev),
        dtype=str(dt).replace("torch.", ""), default_tile=tile, batch=_auto_batch(desc, dev, dt, tile),
        default_scale=target.default_scale if isinstance(target, ModelSpec) else None,
        release=release, run_whole=run_whole,
        architecture=desc.architecture.name, weights=str(path), native=module,
        speedups=tuple(name for name, on in (("compiled", compile),
                                             (f"fused_upconv×{fused_upconvs}", fused_upconvs),
                                             ("fp32_trunk", fp32_trunk)) if on))
