"""The fused nearest-×2 up-convolution (pipeline_lib/upscale/backends/nearest_upconv.py) on its own
and inside Real-ESRGAN x4plus: spandrel's plain module vs the same module rewritten, same process,
alternating order, best kept; plus the largest difference between their outputs.

    python bench/fused_upconv.py            # stage at 256² and 512² inputs; x4plus at 128² and 256²
    python bench/fused_upconv.py --quick    # stage at 128²; x4plus at 64²

Ends with ``summary: stage_speedup=… model_speedup=… max_abs_diff=…`` (medians over sizes).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _common import alternating  # noqa: E402


def best_of(fns: dict, x, rounds: int) -> dict[str, float]:
    best = {k: float("inf") for k in fns}
    for _rnd, name in alternating(list(fns), rounds):
        t = time.perf_counter()
        fns[name](x)
        best[name] = min(best[name], time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args(argv)

    import torch
    from spandrel import ModelLoader
    from torch import nn

    import pipeline_lib  # noqa: F401  (huge pages for torch's CPU tensors, as in real runs)
    from pipeline_lib.heap import reuse_freed_memory
    from pipeline_lib.upscale.backends.nearest_upconv import NearestUpConv2x, rewrite_nearest_upconv
    from pipeline_lib.upscale.backends.torch_backend import load_state_dict
    from pipeline_lib.upscale.registry import MODELS
    from pipeline_lib.upscale.weights import converted_from_ncnn

    cl = torch.channels_last
    stage_sizes, model_sizes = ([128], [64]) if a.quick else ([256, 512], [128, 256])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; best of {a.rounds} alternating rounds")
    stage_ratios, model_ratios, diffs = [], [], []
    with torch.inference_mode(), reuse_freed_memory():
        conv = nn.Conv2d(64, 64, 3, padding=1)
        plain = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv).eval()
        fused = NearestUpConv2x(conv).eval()
        for s in stage_sizes:
            x = torch.rand(1, 64, s, s).contiguous(memory_format=cl)
            diffs.append(float((plain(x) - fused(x)).abs().max()))
            b = best_of({"plain": plain, "fused": fused}, x, a.rounds)
            stage_ratios.append(b["plain"] / b["fused"])
            print(f"up-conv 64→64, {s}² → {2 * s}²: plain {b['plain'] * 1e3:8.1f} ms, fused "
                  f"{b['fused'] * 1e3:8.1f} ms, {stage_ratios[-1]:.2f}×")

        sd = load_state_dict(converted_from_ncnn(MODELS["realesrgan-x4plus"]))
        ref = ModelLoader().load_from_state_dict(sd).model.eval()
        fast = copy.deepcopy(ref)
        n = rewrite_nearest_upconv(fast)
        ref, fast = ref.to(memory_format=cl), fast.to(memory_format=cl)
        for s in model_sizes:
            x = torch.rand(1, 3, s, s).contiguous(memory_format=cl)
            ref(x[..., :32, :32]), fast(x[..., :32, :32])  # oneDNN set-up outside the timing
            diffs.append(float((ref(x) - fast(x)).abs().max()))
            b = best_of({"plain": ref, "fused": fast}, x, a.rounds)
            model_ratios.append(b["plain"] / b["fused"])
            print(f"x4plus ({n} up-convs fused), {s}² → {4 * s}²: plain {b['plain']:7.2f} s, "
                  f"fused {b['fused']:7.2f} s, {model_ratios[-1]:.3f}×")
    print(f"summary: stage_speedup={statistics.median(stage_ratios):.2f} "
          f"model_speedup={statistics.median(model_ratios):.3f} max_abs_diff={max(diffs):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
