"""PyTorch backend: any architecture spandrel knows (ESRGAN/RRDBNet, SRVGG compact, SwinIR, ...)."""
from __future__ import annotations

import logging
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from spandrel import ModelTiling

from ...devices import resolve_device, resolve_dtype, supports_bf16, free_memory
from ...errors import InvalidParameterError, TileOutOfMemoryError, WeightsError
from .. import weights as W
from ..registry import ModelSpec
from ...errors import WholeImageOutOfMemoryError
from ..tiling import default_overlap
from . import Upscaler
from .mixed_bf16 import bf16_with_fp32_residual
from .nearest_upconv import rewrite_nearest_upconv

__all__ = ["BF16_DEFAULT_ARCHS", "load_state_dict", "read_model", "choose_dtype", "cpu_tile",
           "note_default_bf16", "load"]

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


def _per_px_bytes(desc, dtype) -> int:
    # ~ bytes per input pixel for RRDBNet-class models (peak activations, measured order of
    # magnitude), a safe upper bound for the lighter architectures
    return (24 if dtype == torch.float16 else 48) * 1024 // 16 * desc.scale ** 2


def cpu_tile(desc) -> int:
    """The tile where free memory is not measured (CPU, MPS): RRDBNet-class models are the
    heavy ones per pixel."""
    return 256 if desc.architecture.id == "ESRGAN" else 384


def _auto_tile(desc, device: torch.device, dtype: torch.dtype) -> int:
    free = free_memory(device)
    if free is None:
        return cpu_tile(desc)
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



def _weights_file(target: ModelSpec | str | Path, progress: bool) -> tuple[Path, str]:
    """(local weight file, display name) for a registry spec, an https URL or a local path."""
    if isinstance(target, ModelSpec):
        return W.weights_path(target, progress=progress), target.name
    if str(target).startswith(("https://", "http://")):
        return W.fetch_url(str(target), progress=progress), str(target)
    path = Path(target)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file.")
    return path, str(target)


def read_model(target: ModelSpec | str | Path, progress: bool = True):
    """(spandrel descriptor, weight file, name) for ``target``, its scale checked against the
    registry's."""
    path, name = _weights_file(target, progress)
    desc = _descriptor(load_state_dict(path), name)
    if isinstance(target, ModelSpec) and desc.scale != target.scale:
        raise WeightsError(f"{path}: detected x{desc.scale}, registry says x{target.scale}; "
                           "the cached file is wrong. Delete it and run again.")
    return desc, path, name


# Architectures (spandrel ids) whose bf16 path keeps its residual sums in fp32 (mixed_bf16.py):
# on a CPU with native bf16 they default to it, as GPUs default to fp16.
BF16_DEFAULT_ARCHS = frozenset({"ESRGAN", "Compact"})


def choose_dtype(desc, dev: torch.device, dtype, name: str) -> torch.dtype:
    """The dtype to run in: the one asked for where this device and architecture compute it
    natively (fp32 with a warning where not); unasked, fp16 on CUDA, bf16 on a native-bf16 CPU
    for :data:`BF16_DEFAULT_ARCHS`, else fp32."""
    dt = resolve_dtype(dtype)
    native_bf16 = desc.supports_bfloat16 and supports_bf16(dev)
    if dt is None:
        if dev.type == "cuda" and desc.supports_half:
            return torch.float16
        cpu_bf16 = dev.type == "cpu" and native_bf16 and desc.architecture.id in BF16_DEFAULT_ARCHS
        return torch.bfloat16 if cpu_bf16 else torch.float32
    if dt == torch.float16 and (dev.type == "cpu" or not desc.supports_half):
        log.warning("fp16 is not usable for %s on %s; using fp32", name, dev)
        return torch.float32
    if dt == torch.bfloat16 and not native_bf16:
        log.warning("bf16 has no native support for %s on %s; using fp32", name, dev)
        return torch.float32
    return dt


def note_default_bf16(name: str) -> None:
    """The one log line of a load that chose bf16 on a CPU by default: what and how to undo it."""
    log.info("%s runs in bf16 on this CPU (native bf16: 2-4× faster than fp32, within a few "
             "levels of it); dtype='fp32' (CLI --dtype fp32) gives the exact fp32 output", name)


def _prepare(desc, dev: torch.device, dt: torch.dtype, default: bool):
    """The module rewritten for ``dev``, cast and moved: (module, dtype it runs in, dtype its
    input takes, fused up-convolutions, whether its residual sums stay fp32)."""
    module = desc.model.eval()  # still on the host: rewrite, then cast and move once
    on_cpu = dev.type == "cpu"
    # same function, less work; measured on CPUs only (bench/README.md), so only applied there.
    # Before any cast, so the fused kernels are summed from the fp32 weights.
    fused = rewrite_nearest_upconv(module) if on_cpu and desc.architecture.id == "ESRGAN" else 0
    # bf16 convolutions, fp32 residual sums: 52.5-57.7 dB against fp32 over eight photo/texture
    # crops instead of 47.8-54.4 for the whole model in bf16, as fast within noise
    # (README's precision table, bench/README.md); measured on CPUs only
    mixed = dt == torch.bfloat16 and on_cpu and bf16_with_fp32_residual(module)
    if default and dt == torch.bfloat16 and not mixed:  # an unknown layout: no silent 53 dB
        dt = torch.float32
    module = module.to(device=dev, dtype=None if mixed else dt)
    if dev.type in ("cuda", "cpu"):
        module = module.to(memory_format=torch.channels_last)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # tiles share one shape, so autotuning pays off
    return module, dt, torch.float32 if mixed else dt, fused, mixed


def _is_out_of_memory(exc: RuntimeError) -> bool:
    # CPU and MPS allocation failures are plain RuntimeErrors; they shrink tiles as well.
    text = str(exc).lower()
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text
            or "not enough memory" in text or "can't allocate memory" in text)


def _out_of_memory(desc, dev: torch.device, name: str, h: int, w: int) -> TileOutOfMemoryError:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if desc.tiling == ModelTiling.INTERNAL:
        return WholeImageOutOfMemoryError(
            f"{name} must see the whole image (spandrel: {desc.architecture.name} tiles "
            f"internally), and a {h}×{w} image does not fit in {dev.type} memory: free memory "
            "(unload_upscalers()), use a smaller image or a device with more memory.")
    return TileOutOfMemoryError(f"out of {dev.type} memory on a {h}×{w} tile")


def _forward_fn(model, desc, dev: torch.device, in_dt: torch.dtype, name: str):
    """``forward(batch)``: the model on a float32 N×3×h×w batch, padded to the sizes it takes;
    its output on the device, cropped and clamped to 0..1."""
    req = desc.size_requirements
    minimum, multiple = max(1, req.minimum), max(1, req.multiple_of)

    def forward(batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch)
        if dev.type == "cuda":  # page-locked staging makes the copy asynchronous and ~2× faster
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
            if not _is_out_of_memory(exc):
                raise
            del x
            raise _out_of_memory(desc, dev, name, h, w) from None
        if ph or pw:
            y = y[..., : h * desc.scale, : w * desc.scale]
        return y.clamp_(0, 1)

    return forward


def _to_host(y: torch.Tensor) -> np.ndarray:
    if y.device.type != "cuda":
        return y.cpu().numpy()
    # pinned host buffers come from torch's caching host allocator, so this costs no
    # cudaHostAlloc per tile; the returned array keeps its buffer alive
    host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
    host.copy_(y, non_blocking=True)
    torch.cuda.current_stream(y.device).synchronize()
    return host.numpy()


def _runners(forward):
    """(run, run_whole) for :class:`Upscaler` around ``forward``."""

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        return _to_host(forward(batch).float())

    @torch.inference_mode()
    def run_whole(chw: np.ndarray) -> np.ndarray:
        # the same sums as upscale()'s host-side conversion (fp32 ×255, +0.5, clip, truncate),
        # so the bytes are identical; on a GPU this ships 1 byte per value instead of 4 and
        # spares the host a pass over the full-size float image (~70 ms at 2048² on 2 cores)
        y = forward(chw[None])[0].float().mul_(255.0).add_(0.5).clamp_(0, 255.0)
        return _to_host(y.to(torch.uint8).permute(1, 2, 0).contiguous())

    return run, run_whole


def _check_options(compile, options: dict) -> None:
    if options:
        raise InvalidParameterError(f"the torch backend takes no options {sorted(options)}; "
                                    "it takes compile=True/False.")
    if not isinstance(compile, bool):
        raise InvalidParameterError(f"compile must be True or False, got {compile!r}.")


def _release_fn(module, dev: torch.device):
    def release() -> None:
        module.to("cpu")
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    return release


def load(target: ModelSpec | str | Path, device=None, dtype=None, progress: bool = True,
         compile: bool = False, **options) -> Upscaler:
    """Load ``target`` (a registry spec, a local weight file or an https URL) with spandrel.

    ``compile=True`` wraps the model in ``torch.compile`` (fixed shapes: the tiler feeds one tile
    shape): it costs a compile per new shape (tens of seconds), so it pays on long GPU jobs only.
    ``overlap`` is the overlap tiles need for this architecture
    (:func:`..tiling.default_overlap`); ``tiling`` is spandrel's advice for it
    ('supported', 'discouraged', 'internal'), the last two run untiled by default
    (``default_tile=0``, :func:`..tiling.tile_for_model`).
    """
    _check_options(compile, options)
    dev = resolve_device(device)
    desc, path, name = read_model(target, progress)
    dt = choose_dtype(desc, dev, dtype, name)
    module, dt, in_dt, fused_upconvs, fp32_sums = _prepare(desc, dev, dt, default=dtype is None)
    if dtype is None and dt == torch.bfloat16 and dev.type == "cpu":
        note_default_bf16(name)
    model = torch.compile(module, dynamic=False) if compile else module
    run, run_whole = _runners(_forward_fn(model, desc, dev, in_dt, name))
    whole_only = desc.tiling != ModelTiling.SUPPORTED
    tile = 0 if whole_only else _auto_tile(desc, dev, dt)
    return Upscaler(
        name=name, backend="torch", scale=desc.scale, run=run, device=str(dev),
        dtype=str(dt).replace("torch.", ""), default_tile=tile,
        batch=1 if whole_only else _auto_batch(desc, dev, dt, tile),
        default_scale=target.default_scale if isinstance(target, ModelSpec) else None,
        release=_release_fn(module, dev), run_whole=run_whole,
        architecture=desc.architecture.name, weights=str(path), native=module,
        speedups=tuple(name for name, on in (("compiled", compile),
                                             (f"fused_upconv×{fused_upconvs}", fused_upconvs),
                                             ("fp32_trunk", fp32_sums)) if on),
        tiling=desc.tiling.name.lower(), overlap=default_overlap(desc.architecture.id))
