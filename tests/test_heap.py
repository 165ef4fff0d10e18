"""reuse_freed_memory: freed blocks are reused inside the scope and handed back after it."""
from __future__ import annotations

import platform
import resource
import threading

import numpy as np
import pytest

from pipeline_lib import heap

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="malloc tuning needs glibc")

def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "never"


# with THP "always" the kernel backs big mappings with 2 MiB pages by itself, so counting 4 KiB
# faults measures nothing there
small_page_faults = pytest.mark.skipif(_thp_mode() == "always",
                                       reason="transparent huge pages are always on here")

BLOCK = 48 << 20  # above glibc's largest mmap threshold (32 MiB): outside the scope each is mmapped


def _faults_for_allocs(n: int = 12) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = _block()
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _block() -> bytearray:
    """A BLOCK-sized malloc'd buffer with every page written (numpy and torch would ask for
    transparent huge pages, which hides the 4 KiB faults this measures)."""
    b = bytearray(BLOCK)
    page = resource.getpagesize()
    b[::page] = b"\x01" * (BLOCK // page)
    return b


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@glibc
@small_page_faults
def test_scope_cuts_page_faults_of_repeated_large_allocations():
    outside = _faults_for_allocs()
    with heap.reuse_freed_memory() as active:
        assert active is True
        inside = _faults_for_allocs()
    pages = 12 * BLOCK // resource.getpagesize()
    assert outside > 0.8 * pages, (outside, pages)  # every block faulted in again
    assert inside < outside / 4, (inside, outside)  # only the first block's pages fault


@glibc
def test_freed_memory_is_returned_when_the_scope_ends():
    with heap.reuse_freed_memory():
        a = [_block() for _ in range(3)]
        held = _rss()
        del a
        kept = _rss()
        assert kept > held - BLOCK // 2, "inside the scope a freed block should stay mapped"
    after = _rss()
    assert after < kept - 2 * BLOCK, (kept, after)


@glibc
@small_page_faults
def test_nested_and_concurrent_scopes_share_one_state():
    barrier = threading.Barrier(4)

    def work():
        with heap.reuse_freed_memory():
            barrier.wait()
            with heap.reuse_freed_memory():
                _block()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert heap._depth == 0
    # after the last scope closed, large blocks are mmapped (and faulted) again
    assert _faults_for_allocs(4) > 0.8 * 4 * BLOCK // resource.getpagesize()


def test_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_HEAP_REUSE", "0")
    monkeypatch.setattr(heap, "_libc", False)  # forget the cached lookup
    with heap.reuse_freed_memory() as active:
        assert active is False
        assert heap._depth == 0


_TORCH_FAULTS = """
import resource, sys
import pipeline_lib, torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    t = torch.empty(16 << 20).fill_(1.0)  # 64 MiB
    del t
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@glibc
@pytest.mark.skipif(_thp_mode() != "madvise",
                    reason="needs THP in madvise mode (the kernel's choice decides otherwise)")
@pytest.mark.parametrize("env_value", [None, "0"])
def test_importing_pipeline_lib_gives_torch_huge_pages(env_value):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value  # an explicit choice is kept
    out = subprocess.run([sys.executable, "-c", _TORCH_FAULTS], env=env, capture_output=True,
                         text=True, check=True).stdout
    faults, small_pages = int(out.split()[-1]), 4 * (64 << 20) // resource.getpagesize()
    if env_value is None:
        assert faults < small_pages / 8, (faults, small_pages)
    else:
        assert faults > small_pages / 2, (faults, small_pages)


def test_upscale_gives_the_same_pixels_with_and_without_heap_reuse(photo, monkeypatch):
    from pipeline_lib import upscale

    img = np.asarray(photo)[100:148, 200:256]
    tuned = upscale(img, "realesr-animevideov3", scale=2, backend="torch", progress=False)
    monkeypatch.setattr(heap, "_libc", None)  # as with PIPELINE_LIB_HEAP_REUSE=0
    plain = upscale(img, "realesr-animevideov3", scale=2, backend="torch", progress=False)
    assert tuned.shape == plain.shape == (96, 112, 3)
    assert np.array_equal(tuned, plain)
