"""What the CPU memory settings buy: Real-ESRGAN x4plus through ``upscale()`` with glibc heap
reuse and PyTorch's transparent huge pages each on or off, same input, same run.

Each setting runs in fresh processes (the environment decides both switches before torch
allocates): ``PIPELINE_LIB_HEAP_REUSE`` (``pipeline_lib.heap.reuse_freed_memory``) and
``THP_MEM_ALLOC_ENABLE``. Rounds alternate order; each setting keeps its best round. Reported:
best seconds, minor page faults during the timed runs, peak RSS, and the speed-up of each
setting over "both off". The images must be identical (these settings change no arithmetic).

    python bench/cpu_memory.py            # 256² crop, 2 repeats, 2 rounds
    python bench/cpu_memory.py --quick    # 96² crop, 1 repeat, 1 round

Ends with ``summary: heap_and_thp_speedup=… faults_ratio=…`` (both on vs both off).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

SETTINGS = {  # name → (PIPELINE_LIB_HEAP_REUSE, THP_MEM_ALLOC_ENABLE)
    "both off": ("0", "0"),
    "heap reuse": ("1", "0"),
    "huge pages": ("0", "1"),
    "both on (default)": ("1", "1"),
}


def worker(a) -> int:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image

    from pipeline_lib import upscale

    img = np.asarray(Image.open(ROOT / "assets" / "astronaut.png").convert("RGB"))
    top = (img.shape[0] - a.size) // 2
    img = np.ascontiguousarray(img[top:top + a.size, top:top + a.size])
    kw = dict(backend="torch", tile=0, progress=False)
    upscale(img[:32, :32].copy(), **kw)  # model load and first-call set-up, not timed
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        out = upscale(img, **kw)
        times.append(time.perf_counter() - t)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    np.save(Path(a.out) / "image.npy", out)
    C.write_result(Path(a.out) / "result.json",
                   {"times": times, "faults": faults / a.repeat, "peak_rss_mb": C.peak_rss_mb()})
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--size", type=int, default=None, help="input side (default 256; 96 quick)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per process (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 2)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.size = a.size or (96 if a.quick else 256)
    a.repeat = a.repeat or (1 if a.quick else 2)
    a.rounds = a.rounds or (1 if a.quick else 2)
    if a.worker:
        return worker(a)

    import numpy as np

    print(f"machine: {C.machine_description()}; {a.size}² → {4 * a.size}² x4plus, untiled, "
          f"{a.rounds} round(s) × {a.repeat} timed run(s)", flush=True)
    best: dict[str, dict] = {}
    images = {}
    names = list(SETTINGS)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-memory-") as td:
        for rnd, name in C.alternating(names, a.rounds):
            heap, thp = SETTINGS[name]
            out = Path(tempfile.mkdtemp(dir=td))
            argv = [str(Path(__file__).resolve()), "--worker", "--out", str(out),
                    "--size", str(a.size), "--repeat", str(a.repeat)]
            r = C.run_worker(sys.executable, argv, out / "result.json",
                             env={"PIPELINE_LIB_HEAP_REUSE": heap, "THP_MEM_ALLOC_ENABLE": thp})
            r.update(C.summarise(r["times"]))
            print(f"  round {rnd + 1}: {name:18s} {r['best_s']:7.2f} s  "
                  f"{r['faults'] / 1e6:6.2f} M faults/run", flush=True)
            if name not in best or r["best_s"] < best[name]["best_s"]:
                best[name] = r
            images[name] = np.load(out / "image.npy")
    base = best["both off"]
    print("\n| setting | best s | page faults per run | peak RSS MiB | speed-up | same pixels |")
    print("|---|---|---|---|---|---|")
    for name in names:
        r = best[name]
        same = np.array_equal(images[name], images["both off"])
        print(f"| {name} | {r['best_s']:.2f} | {r['faults'] / 1e6:.2f} M | {r['peak_rss_mb']:.0f} | "
              f"{base['best_s'] / r['best_s']:.2f}× | {'yes' if same else 'NO'} |")
    on = best["both on (default)"]
    print(f"summary: heap_and_thp_speedup={base['best_s'] / on['best_s']:.2f} "
          f"faults_ratio={on['faults'] / max(base['faults'], 1):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
