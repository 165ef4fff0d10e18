"""Helpers shared by the benchmark scripts: timing, peak memory, PSNR, worker subprocesses.

Only the standard library and numpy at import time, so a peer's separate venv can import it too.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], object], repeat: int) -> tuple[object, list[float]]:
    """Run ``fn`` ``repeat`` times; return the last result and every run's seconds.

    The machine may be shared, so callers report the best (least disturbed) and the median."""
    out, times = None, []
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def alternating(items: list, rounds: int):
    """Yield ``(round, item)`` with rounds in A-B-C, C-B-A order, so a shared machine's drifting
    speed hits every item alike."""
    for rnd in range(rounds):
        for item in (items if rnd % 2 == 0 else items[::-1]):
            yield rnd, item


def summarise(times: list[float]) -> dict[str, float]:
    return {"best_s": min(times), "median_s": statistics.median(times)}


def psnr(a, b) -> float:
    """PSNR in dB (peak 255) of two arrays of one shape, e.g. uint8 images or luma planes
    (inf when identical)."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0 ** 2 / mse))


def run_worker(python: str | Path, argv: list[str], result_json: Path, env: dict | None = None,
               timeout: float | None = None) -> dict:
    """Run ``python argv`` in a fresh process (so its peak RSS is its own) and read its JSON."""
    proc = subprocess.run([str(python), *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0 or not result_json.is_file():
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise RuntimeError(f"worker {' '.join(argv[:4])} failed (rc {proc.returncode}):\n{tail}")
    return json.loads(result_json.read_text())


def write_result(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data))


def machine_description() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {sys.version.split()[0]}"
