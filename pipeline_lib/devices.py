"""Device and precision choices shared by the upscalers and the diffusion pipelines."""
from __future__ import annotations

import functools
import re

from .errors import InvalidParameterError
from .gpu_support import unsupported_gpu_reason

__all__ = ["resolve_device", "resolve_dtype", "supports_bf16", "cpu_has_native_bf16", "free_memory"]

_DEVICE = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


def resolve_device(device: "str | object | None" = None) -> "torch.device":  # noqa: F821
    """Validate ``device`` ('cpu', 'cuda', 'cuda:1', 'mps' or a torch.device); None picks the best.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    import torch

    if device is None:
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            if unsupported_gpu_reason(index) is None:  # a P100 under a torch without sm_60: CPU
                return torch.device("cuda", index)
            return torch.device("cpu")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if isinstance(device, torch.device):
        device = str(device)
    m = _DEVICE.match(str(device).strip().lower())
    if not m:
        raise InvalidParameterError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InvalidParameterError(f"device {device!r} asked for, but no CUDA GPU is available "
                                        "here; use device='cpu'.")
        idx = int(index) if index is not None else torch.cuda.current_device()
        if idx >= n:
            raise InvalidParameterError(f"device {device!r} does not exist: this machine has {n} "
                                        f"CUDA device(s), cuda:0..cuda:{n - 1}.")
        reason = unsupported_gpu_reason(idx)
        if reason is not None:  # named by the user: an error, not a silent CPU run
            raise InvalidParameterError(f"device {device!r}: {reason.split(': running on')[0]}. "
                                        f"Use device='cpu', or fix torch: "
                                        f"{reason.rsplit(': ', 1)[-1]}")
        return torch.device("cuda", idx)
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidParameterError("device 'mps' asked for, but Metal is not available here; use 'cpu'.")
    return torch.device(kind)


_DTYPES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16",
           "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32"}


def resolve_dtype(dtype: "str | object | None") -> "torch.dtype | None":  # noqa: F821
    """Parse 'fp16'/'bf16'/'fp32' (or a torch.dtype); None means 'choose for the device'."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise InvalidParameterError(f"unsupported dtype {dtype}; use torch.float16, "
                                        "torch.bfloat16 or torch.float32 ('fp16', 'bf16', 'fp32').")
        return dtype
    name = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise InvalidParameterError(f"unknown dtype {dtype!r}; use 'fp16', 'bf16' or 'fp32'.")
    return getattr(torch, name)


def supports_bf16(device: "torch.device") -> bool:  # noqa: F821
    """Native bf16 arithmetic on ``device``: Ampere+ GPUs; CPUs with AVX512-BF16 or AMX (x86) or
    the BF16 extension (Arm). A P100/T4 has none, and other CPUs emulate it ~10× slower than fp32.

    >>> import torch; supports_bf16(torch.device("cpu")) in (True, False)
    True
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and cpu_has_native_bf16()


_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags, and Arm's "Features: ... bf16"


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bf16 natively, read from /proc/cpuinfo's flags.

    torch only says whether oneDNN *accepts* bf16 (it also does on plain AVX-512, by emulation),
    and py-cpuinfo would be a dependency for one line, so the kernel's own flag list decides.
    Off Linux the answer is False (fp32 stays the choice there).
    """
    if cpuinfo is None:
        return _cpu_flags_native_bf16()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


@functools.lru_cache(maxsize=1)
def _cpu_flags_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return cpu_has_native_bf16(f.read())
    except OSError:
        return False


def free_memory(device: "torch.device") -> int | None:  # noqa: F821
    """Free bytes on a CUDA device, or None for other devices."""
    import torch

    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)
