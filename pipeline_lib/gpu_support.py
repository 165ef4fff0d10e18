"""Is this GPU one the installed torch has kernels for? Kaggle's P100 (sm_60) with a torch built
without sm_60 reports ``torch.cuda.is_available() == True``, then fails on its first real
operation ("no kernel image is available for execution on the device"). Asked before any CUDA
work, this turns that crash into one warning and a CPU run.

>>> arch_supported((7, 5), ["sm_75", "sm_80"])
True
>>> arch_supported((6, 0), ["sm_75", "sm_80", "compute_80"])
False
"""
from __future__ import annotations

import functools
import logging

__all__ = ["arch_supported", "unsupported_gpu_reason", "is_missing_kernel_error",
           "note_missing_kernels", "CU126_FIX"]

log = logging.getLogger(__name__)

#: PyTorch 2.14's CUDA 12.6 wheels are the last with sm_60 (P100) kernels.
CU126_FIX = ("pip install --force-reinstall torch==2.14.1 torchvision==0.29.1 "
             "--index-url https://download.pytorch.org/whl/cu126")


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a GPU of ``capability`` runs a torch built for ``arch_list`` (``sm_XY`` cubins run
    on the same major version at an equal or higher minor; ``compute_XY`` PTX is JIT-compiled
    for any GPU at or above XY)."""
    major, minor = capability
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        if not num.isdigit() or len(num) < 2:
            continue
        a_major, a_minor = int(num[:-1]), int(num[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


#: devices whose kernels were found missing at run time (the arch list looked fine)
_FAILED_AT_RUN_TIME: dict[int, str] = {}


def unsupported_gpu_reason(index: int = 0) -> str | None:
    """None when CUDA device ``index`` can run this torch; else one sentence saying why not and
    how to fix it (logged once per device)."""
    return _FAILED_AT_RUN_TIME.get(index) or _reason_from_arch_list(index)


def note_missing_kernels(device: str, exc: BaseException) -> str:
    """Remember that ``device`` raised "no kernel image" so later automatic choices take the CPU;
    log one warning with the fix and return it."""
    import torch

    index = int(device.split(":")[1]) if ":" in device else 0
    name = torch.cuda.get_device_name(index)
    reason = (f"{name} failed with '{str(exc).strip().splitlines()[0]}': this torch "
              f"{torch.__version__} has no kernels for it; running on the CPU instead. To use the "
              f"GPU, reinstall torch with kernels for it and restart: {CU126_FIX}")
    if index not in _FAILED_AT_RUN_TIME:
        log.warning(reason)
    _FAILED_AT_RUN_TIME[index] = reason
    return reason


@functools.lru_cache(maxsize=None)
def _reason_from_arch_list(index: int) -> str | None:
    import torch

    arch_list = torch.cuda.get_arch_list()
    capability = tuple(torch.cuda.get_device_capability(index))
    if not arch_list or arch_supported(capability, arch_list):
        return None
    name = torch.cuda.get_device_name(index)
    sm = f"sm_{capability[0]}{capability[1]}"
    reason = (f"{name} ({sm}) is not supported by this torch {torch.__version__} (built for "
              f"{', '.join(arch_list)}): running on the CPU instead. To use the GPU, reinstall a "
              f"torch with {sm} kernels and restart: {CU126_FIX}")
    log.warning(reason)
    return reason


def is_missing_kernel_error(exc: BaseException) -> bool:
    """The run-time form of the same problem (a GPU the build has no kernels for)."""
    return "no kernel image is available" in str(exc).lower()
