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

# Fault counts depend on the allocator's history (earlier tests leave huge-page-advised heap
# behind), so they are measured in a fresh interpreter that imports nothing heavy.
_FAULTS = """
import json, resource
from pipeline_lib import heap
BLOCK, PAGE = %d, resource.getpagesize()

def block():
    b = bytearray(BLOCK)  # numpy/torch would ask for huge pages and hide the 4 KiB faults
    b[::PAGE] = b"\\x01" * (BLOCK // PAGE)
    return b

def faults(n):
    f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = block()
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * PAGE

outside = faults(12)
with heap.reuse_freed_memory() as active:
    inside = faults(12)
    held = [block() for _ in range(3)]
    rss_held = rss()
    del held
    rss_kept = rss()
after = faults(4)
print(json.dumps(dict(active=active, outside=outside, inside=inside, after=after,
                      rss_held=rss_held, rss_kept=rss_kept, rss_after=rss())))
""" % BLOCK


@glibc
@small_page_faults
def test_scope_reuses_freed_blocks_and_returns_them_afterwards():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                         check=True).stdout
    r = json.loads(out.splitlines()[-1])
    pages = BLOCK // resource.getpagesize()
    assert r["active"] is True
    assert r["outside"] > 0.8 * 12 * pages, r  # every block faulted in again
    assert r["inside"] < r["outside"] / 4, r  # only the first block's pages fault
    assert r["rss_kept"] > r["rss_held"] - BLOCK // 2, r  # freed blocks stay mapped inside
    assert r["rss_after"] < r["rss_kept"] - 2 * BLOCK, r  # and go back to the system after
    assert r["after"] > 0.8 * 4 * pages, r  # glibc's own behaviour is back


@glibc
def test_nested_and_concurrent_scopes_share_one_state():
    barrier = threading.Barrier(4)
    seen = []

    def work():
        with heap.reuse_freed_memory() as active:
            barrier.wait()
            with heap.reuse_freed_memory():
                seen.append((active, heap._depth))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a for a, _ in seen] == [True] * 4
    assert max(d for _, d in seen) >= 5  # all four held the scope at once, one nested
    assert heap._depth == 0


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
