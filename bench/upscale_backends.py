"""Seconds and PSNR of every upscaler family on one input, all measured in the same run.

The input (a crop of assets/astronaut.png) is shrunk by the scale with cv2 INTER_CUBIC (what the
OpenCV models were trained on), upscaled back by each method, and compared with the original.
PSNR is on RGB and on the BT.601 Y channel (border of ``scale`` px excluded). Real-ESRGAN is
trained for degraded real photos, not for this clean bicubic shrink, so its PSNR here is expected
to be low: this table measures fidelity and speed, not perceived sharpness.

    python bench/upscale_backends.py            # 256² crop, 3 timed runs each
    python bench/upscale_backends.py --quick    # 96² crop, 1 timed run each
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _common as C  # noqa: E402
from _common import psnr  # noqa: E402
from pipeline_lib import load_upscaler, upscale  # noqa: E402
from pipeline_lib.errors import PipelineError  # noqa: E402
from pipeline_lib.upscale.registry import MODELS  # noqa: E402
from pipeline_lib.upscale.weights import weights_available  # noqa: E402


def luma(rgb: np.ndarray) -> np.ndarray:
    a = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]


def timed(fn, repeat: int) -> tuple[np.ndarray, float]:
    """Median seconds of ``repeat`` runs after one untimed warm-up run (first-forward set-up,
    e.g. oneDNN / OpenCV DNN layer allocation, is not what a long job pays per image)."""
    fn()
    out, times = C.timed(fn, repeat)
    return out, statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(ROOT / "assets" / "astronaut.png"))
    ap.add_argument("--crop", type=int, help="side of the centre-face crop (default 256, quick 96)")
    ap.add_argument("--scale", type=int, default=4, choices=[2, 3, 4])
    ap.add_argument("--repeat", type=int, help="timed runs per method, median kept (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="small crop, one timed run")
    ap.add_argument("--device", help="device for the torch models (default: best available)")
    args = ap.parse_args(argv)
    side = args.crop or (96 if args.quick else 256)
    repeat = args.repeat or (1 if args.quick else 3)
    s = args.scale
    side -= side % s

    full = np.asarray(Image.open(args.input).convert("RGB"))
    cy, cx = min(156, full.shape[0] - side // 2), min(256, full.shape[1] - side // 2)  # the face
    y0, x0 = max(0, cy - side // 2), max(0, cx - side // 2)
    ref = np.ascontiguousarray(full[y0:y0 + side, x0:x0 + side])
    lr = cv2.resize(ref, (side // s, side // s), interpolation=cv2.INTER_CUBIC)

    methods: list[tuple[str, str | None, str]] = [("bicubic", None, "cv2")]
    for fam in ("fsrcnn-small", "fsrcnn", "espcn", "lapsrn", "edsr"):
        name = f"{fam}-x{s}"
        if name not in MODELS:
            continue
        if fam == "edsr" and not weights_available(MODELS[name]):
            print(f"# {name}: skipped (not cached; it downloads ~38 MB on first use)")
            continue
        methods.append((name, name, "opencv"))
    if s == 4:
        methods += [("realesrgan-x4plus", "realesrgan-x4plus", "torch"),
                    ("realesr-animevideov3", "realesr-animevideov3", "torch")]

    rows = []
    for label, model, backend in methods:
        if model is None:
            out, sec = timed(lambda: cv2.resize(lr, (side, side), interpolation=cv2.INTER_CUBIC), repeat)
            load_s, device = 0.0, "cpu"
        else:
            try:
                t = time.perf_counter()
                up = load_upscaler(model, device=args.device if backend == "torch" else None,
                                   backend=backend, progress=False)
                load_s, device = time.perf_counter() - t, up.device
            except (PipelineError, ImportError) as exc:
                print(f"# {label}: skipped ({exc})")
                continue
            out, sec = timed(lambda: upscale(lr, model, backend=backend, progress=False,
                                             device=args.device if backend == "torch" else None),
                             repeat)
        b = slice(s, -s)
        rows.append(dict(method=label, backend=backend, device=device, load_s=load_s, sec=sec,
                         psnr=psnr(out, ref), psnr_y=psnr(luma(out)[b, b], luma(ref)[b, b])))

    base = rows[0]
    torch_ref = next((r for r in rows if r["method"] == "realesrgan-x4plus"), None)
    print(f"\ninput: {Path(args.input).name} crop {side}×{side} → shrink x{s} (cv2 INTER_CUBIC) "
          f"→ upscale x{s}; median of {repeat} run(s) after a warm-up; load time excluded.\n"
          "×bicubic: run time / bicubic's; torch÷: realesrgan-x4plus time / this one's (speed-up)\n")
    head = f"{'method':<22} {'backend':<7} {'device':<6} {'load s':>7} {'run s':>8} " \
           f"{'×bicubic':>9} {'torch÷':>8} {'PSNR':>6} {'PSNR-Y':>7} {'ΔY vs bic':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        vs_bic = r["sec"] / base["sec"] if base["sec"] else float("nan")
        vs_torch = f"{torch_ref['sec'] / r['sec']:8.1f}" if torch_ref else f"{'n/a':>8}"
        print(f"{r['method']:<22} {r['backend']:<7} {r['device']:<6} {r['load_s']:7.2f} "
              f"{r['sec']:8.4f} {vs_bic:9.1f} {vs_torch} {r['psnr']:6.2f} {r['psnr_y']:7.2f} "
              f"{r['psnr_y'] - base['psnr_y']:+9.2f}")
    best = max(rows, key=lambda r: r["psnr_y"])
    fastest_model = min(rows[1:], key=lambda r: r["sec"]) if len(rows) > 1 else base
    parts = [f"input={side}x{side}", f"scale={s}", f"repeat={repeat}", f"bicubic_s={base['sec']:.4f}",
             f"bicubic_psnr_y={base['psnr_y']:.2f}", f"best_psnr_y={best['method']}:{best['psnr_y']:.2f}",
             f"fastest_model={fastest_model['method']}:{fastest_model['sec']:.4f}"]
    for r in rows[1:]:
        key = r["method"].replace("-", "_")
        parts += [f"{key}_s={r['sec']:.4f}", f"{key}_dy={r['psnr_y'] - base['psnr_y']:+.2f}"]
        if torch_ref and r is not torch_ref:
            parts.append(f"{key}_speedup_vs_torch={torch_ref['sec'] / r['sec']:.1f}")
    print("\nsummary: " + " ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
