"""Keep freed memory inside the process while a CPU model runs (glibc only; a no-op elsewhere).

glibc's malloc serves each allocation above its mmap threshold with a fresh ``mmap`` and unmaps
it on ``free``, and it trims the heap top as soon as a large block there is freed. A CPU forward
pass allocates and frees every activation once per layer, so the kernel zero-fills the same
memory page by page again for each of them: a 256²→1024² Real-ESRGAN run took 2–3 million page
faults and ~10 % of its time that way. The usual advice for PyTorch on CPU is to preload
jemalloc or tcmalloc; that cannot be asked of a notebook user, so :func:`reuse_freed_memory`
tells glibc, for the duration of a run only, to serve large blocks from the heap and to keep
freed memory, then restores fixed thresholds and returns the free memory to the system with
``malloc_trim``. Nested and concurrent uses share one scope (a counter under a lock).

Set ``PIPELINE_LIB_HEAP_REUSE=0`` to leave malloc alone.

Importing this module also asks PyTorch to back its large CPU tensors with transparent huge
pages (``THP_MEM_ALLOC_ENABLE=1``; one fault and one TLB entry per 2 MiB instead of 512), which
it reads at its first allocation, so it only takes effect when ``pipeline_lib`` is imported
before torch allocates anything. Together the two cut a 256²→1024² x4plus run's page faults
200-fold and its time by ~10 % (bench/cpu_memory.py). An explicit ``THP_MEM_ALLOC_ENABLE`` in
the environment is left as it is.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import threading

from . import config
from typing import Iterator

__all__ = ["reuse_freed_memory"]

log = logging.getLogger(__name__)

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
# what the values go back to: glibc's own dynamic rule stops at a 32 MiB mmap threshold with
# twice that as trim threshold, and any mallopt call switches that rule off for good, so the
# steady state it would have reached is restored as fixed values
_RESTORE = ((_M_MMAP_MAX, 65536), (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 64 << 20))
_KEEP = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2 ** 31 - 1))

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        _libc = None
        if config.get("PIPELINE_LIB_HEAP_REUSE") and platform.system() == "Linux" \
                and platform.libc_ver()[0] == "glibc":
            try:
                lib = ctypes.CDLL(None)
                lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _libc = lib
            except (OSError, AttributeError) as exc:
                log.debug("malloc tuning unavailable: %s", exc)
    return _libc


def _set(lib: ctypes.CDLL, params) -> None:
    for param, value in params:
        lib.mallopt(param, value)


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Within this block, freed memory stays in the process for the next allocation.

    Yields whether malloc tuning is active (glibc, not disabled). On leaving the outermost
    block the free memory goes back to the system, so peak RSS is that of the run itself.

    >>> with reuse_freed_memory():
    ...     pass  # run a CPU model here
    """
    global _depth
    lib = _glibc()
    if lib is None:
        yield False
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(lib, _KEEP)
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(lib, _RESTORE)
                lib.malloc_trim(0)
