"""Memory profiles: which dtype, attention and offloading a pipeline gets on this device.

``auto`` decides from the device: a CUDA GPU with ≥ 12 GB runs everything on the GPU in fp16 with
PyTorch SDPA attention; a smaller GPU keeps only the running sub-model on the GPU (model CPU
offload); a CPU runs fp32 (bf16 when asked, on CPUs with native bf16). ``fast`` / ``balanced`` /
``low`` force a profile.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from . import config
from .devices import resolve_device, supports_bf16
from .errors import InvalidParameterError
from .validation import check_flag

__all__ = ["PROFILES", "BIG_GPU_BYTES", "TILE_VAE_PIXELS", "MemoryPlan", "COMPILE_ENV",
           "compile_default", "plan_memory", "apply_plan", "prepare_vae", "dtype_kwargs"]

log = logging.getLogger(__name__)

PROFILES = ("auto", "fast", "balanced", "low")
BIG_GPU_BYTES = 12 * 1024 ** 3
TILE_VAE_PIXELS = 1024 * 1024  # decode larger images in tiles (the VAE decoder peaks at ~ 4 GB there)


@dataclass(frozen=True)
class MemoryPlan:
    profile: str  # fast | balanced | low | cpu
    device: str
    dtype: str  # "float16", "bfloat16", "float32"
    offload: str | None = None  # None | "model" | "sequential"
    attention: str = "sdpa"  # "sdpa" | "xformers"
    attention_slicing: bool = False
    channels_last: bool = False  # UNet + VAE convs in NHWC (cuDNN's fast layout)
    fuse_qkv: bool = False  # one q|k|v matmul per self-attention (diffusers fuse_qkv_projections)
    compile: bool = False  # torch.compile the UNet

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    @property
    def load_kwargs(self) -> dict:
        """The dtype argument of diffusers' ``from_pretrained``/``from_single_file``."""
        return dtype_kwargs(self.torch_dtype)


def dtype_kwargs(torch_dtype) -> dict:
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype``; Colab and Kaggle ship 0.39, which
    ignores ``dtype`` (a fp32 load on a 16 GB GPU), so the spelling follows the installed version."""
    import diffusers

    major, minor = (int(p) for p in diffusers.__version__.split(".")[:2])
    return {"dtype": torch_dtype} if (major, minor) >= (0, 42) else {"torch_dtype": torch_dtype}


COMPILE_ENV = "PIPELINE_LIB_COMPILE"


def compile_default() -> bool:
    """``PIPELINE_LIB_COMPILE`` as a bool (unset → False); anything unclear is an error."""
    return config.get(COMPILE_ENV)


def plan_memory(memory: str = "auto", device=None, *, dtype=None, xformers: bool = False,
                channels_last: bool | None = False, fuse_qkv: bool | None = False,
                compile: bool | None = False) -> MemoryPlan:
    """Choose a :class:`MemoryPlan`; logs what was chosen and why. ``channels_last`` /
    ``fuse_qkv`` / ``compile`` set to None take the device's default (see module doc; the
    generation loader passes None, other users such as the diffusion upscalers keep them off).

    >>> plan_memory("auto", "cpu").dtype
    'float32'
    """
    from dataclasses import replace

    channels_last = check_flag(channels_last, "channels_last")
    fuse_qkv = check_flag(fuse_qkv, "fuse_qkv")
    compile = check_flag(compile, "compile")
    plan = _plan_memory(memory, device, dtype=dtype, xformers=xformers)
    cuda = plan.device.startswith("cuda")
    # xformers installs its own attention processors, which fusing would replace.
    plan = replace(plan,
                   channels_last=cuda if channels_last is None else channels_last,
                   fuse_qkv=(cuda and plan.attention == "sdpa") if fuse_qkv is None else fuse_qkv,
                   compile=compile_default() if compile is None else compile)
    if plan.fuse_qkv and plan.attention != "sdpa":
        raise InvalidParameterError("fuse_qkv=True needs PyTorch SDPA attention; drop xformers=True "
                                    "or leave fuse_qkv unset.")
    log.info("speed options: channels_last=%s fuse_qkv=%s compile=%s", plan.channels_last,
             plan.fuse_qkv, plan.compile)
    return plan


def _plan_memory(memory: str, device, *, dtype, xformers: bool) -> MemoryPlan:
    from .devices import resolve_dtype

    key = str(memory).strip().lower()
    if key not in PROFILES:
        raise InvalidParameterError(f"unknown memory profile {memory!r}; use one of {', '.join(PROFILES)}.")
    dev = resolve_device(device)
    want = resolve_dtype(dtype)
    if dev.type == "cpu":
        name = "float32" if want is None else str(want).replace("torch.", "")
        if name == "float16":
            raise InvalidParameterError("on the CPU generation runs in fp32 (fp16 is not implemented "
                                        "for several CPU kernels), or in bf16 on CPUs with native "
                                        "bf16; leave dtype unset or use 'bf16' there.")
        if name == "bfloat16" and not supports_bf16(dev):
            raise InvalidParameterError("this CPU has no native bf16 (it needs AVX512-BF16 or AMX, "
                                        "or Arm's BF16 extension; others emulate it ~10× slower "
                                        "than fp32); leave dtype unset (fp32).")
        plan = MemoryPlan("cpu", str(dev), name)
        log.info("memory profile: cpu (%s, no offload)%s", "bf16" if name == "bfloat16" else "fp32",
                 "" if key == "auto" else f" — {key!r} only applies to GPUs")
        return plan
    name = "float16"
    if want is not None:
        name = str(want).replace("torch.", "")
        if name == "bfloat16" and not supports_bf16(dev):
            # P100/T4 (compute < 8) emulate bf16: slow and sometimes wrong. fp16 is native there.
            raise InvalidParameterError(f"{dev} has no native bf16 (it needs an Ampere or newer "
                                        "GPU); use dtype='fp16'.")
    if dev.type == "mps":
        plan = MemoryPlan("fast" if key == "auto" else key, str(dev), name,
                          attention_slicing=key == "low")
    else:
        if key == "auto":
            import torch

            total = torch.cuda.get_device_properties(dev).total_memory
            key = "fast" if total >= BIG_GPU_BYTES else "balanced"
        offload = {"fast": None, "balanced": "model", "low": "sequential"}[key]
        attention = "sdpa"
        if xformers:
            try:
                import xformers  # noqa: F401

                attention = "xformers"
            except ImportError:
                log.warning("xformers asked for but not installed; using PyTorch SDPA attention "
                            "(as fast on PyTorch ≥ 2)")
        plan = MemoryPlan(key, str(dev), name, offload, attention, attention_slicing=key == "low")
    log.info("memory profile: %s (%s on %s, offload=%s, attention=%s)", plan.profile, plan.dtype,
             plan.device, plan.offload or "none", plan.attention)
    return plan


def apply_plan(pipe, plan: MemoryPlan) -> None:
    """Place ``pipe`` on its device as the plan says (once, right after loading)."""
    import torch

    dev = torch.device(plan.device)
    if plan.fuse_qkv:
        _fuse_qkv(pipe)  # before placement, so offload hooks also cover the fused weights
    if plan.channels_last:
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if plan.offload == "model":
        pipe.enable_model_cpu_offload(device=dev)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=dev)
    else:
        pipe.to(dev)
    if plan.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if plan.attention_slicing:
        pipe.enable_attention_slicing()
    if plan.compile and getattr(pipe, "unet", None) is not None:
        # In place (nn.Module.compile) so pipe.unet keeps its class and config; compiling happens
        # on the first call, and again when the image size changes.
        log.info("torch.compile of the UNet: the first image takes about a minute longer")
        pipe.unet.compile()


def _fuse_qkv(pipe) -> None:
    """Fuse UNet (and AutoencoderKL) attention projections where the pipeline supports it."""
    from diffusers import AutoencoderKL

    fuse = getattr(pipe, "fuse_qkv_projections", None)
    if fuse is None or getattr(pipe, "unet", None) is None:
        log.info("%s has no fused QKV projections; left unfused", type(pipe).__name__)
        return
    try:
        fuse(unet=True, vae=isinstance(getattr(pipe, "vae", None), AutoencoderKL))
    except (ValueError, AttributeError, NotImplementedError) as exc:  # e.g. added-KV attention
        log.info("QKV fusion not supported by %s (%s); left unfused", type(pipe).__name__, exc)


def prepare_vae(pipe, plan: MemoryPlan, width: int, height: int, batch: int) -> None:
    """Per call: slice the VAE decode for batches and tile it for large images on GPUs."""
    vae = getattr(pipe, "vae", None)
    if vae is None or plan.profile == "cpu":
        return
    big = width * height > TILE_VAE_PIXELS or plan.profile == "low"
    (vae.enable_tiling if big else vae.disable_tiling)()
    (vae.enable_slicing if batch > 1 or plan.profile == "low" else vae.disable_slicing)()
