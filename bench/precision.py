"""What each reduced precision costs in pixels: Real-ESRGAN x4plus in fp16 and bf16 against fp32,
same weights, same crops of assets/astronaut.png, outputs rounded to 8 bits as saved images are.

This is why the library's formats are what they are: fp16 is the default on a GPU; on a CPU,
``dtype="bf16"`` (opt-in, 3-4× faster where AMX computes it, bench/upscale.py) keeps the residual
sums in fp32 around bf16 convolutions (row ``bf16_fp32_trunk``), because with 8 significant bits
against fp16's 11 the whole-bf16 model drifts further over x4plus's 69 residual sums.

    python bench/precision.py                 # three 128² crops on the default device
    python bench/precision.py --quick         # three 64² crops (CPU fp16 is emulated: slow)
    python bench/precision.py --device cuda

Runs spandrel's plain module (no other library rewrites) so only the number formats differ. Ends
with ``summary: psnr_fp16_db=… psnr_bf16_db=… … max_diff_fp16=… …`` (lowest PSNR, largest
difference over crops; differences in 8-bit levels; no bf16 on GPUs without it, e.g. a T4).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _common import psnr  # noqa: E402

ASSET = HERE.parent / "assets" / "astronaut.png"
CORNERS = ((0, 0), (200, 200), (300, 50))  # hair/background, suit detail, helmet edge


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64² crops instead of 128²")
    p.add_argument("--size", type=int, help="crop side (default 128; 64 with --quick)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    a = p.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image
    from spandrel import ModelLoader

    import pipeline_lib  # noqa: F401  (huge pages for torch's CPU tensors, as in real runs)
    from pipeline_lib.upscale.backends.mixed_bf16 import bf16_with_fp32_trunk
    from pipeline_lib.upscale.backends.torch_backend import load_state_dict
    from pipeline_lib.upscale.registry import MODELS
    from pipeline_lib.upscale.weights import converted_from_ncnn

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = a.size or (64 if a.quick else 128)
    model = ModelLoader().load_from_state_dict(
        load_state_dict(converted_from_ncnn(MODELS["realesrgan-x4plus"]))).model.eval()
    model = model.to(device=device, memory_format=torch.channels_last)
    # one copy per format made from the fp32 weights: casting one module back and forth would
    # leave fp32 holding rounded weights. Each: (model, dtype its input takes)
    formats = {"fp16": (copy.deepcopy(model).to(torch.float16), torch.float16)}
    if device.type == "cpu" or torch.cuda.is_bf16_supported():  # P100, T4: no bf16 convolutions
        formats["bf16"] = (copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16)
    if device.type == "cpu":  # what dtype="bf16" runs on a CPU: bf16 convolutions, fp32 sums
        mixed = copy.deepcopy(model)
        if not bf16_with_fp32_trunk(mixed):  # not an assert: python -O would skip the rewrite
            raise SystemExit("x4plus no longer has the layout mixed_bf16.py rewrites")
        formats["bf16_fp32_trunk"] = (mixed, torch.float32)
    image = Image.open(ASSET).convert("RGB")
    print(f"torch {torch.__version__} on {device}; x4plus on {size}² crops, "
          "outputs in 8-bit levels")

    def run(x: torch.Tensor, net, dtype: torch.dtype) -> np.ndarray:
        x = x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        y = net(x)
        return (y.float().clamp_(0, 1) * 255).round_().to(torch.uint8).cpu().numpy()

    worst = {}
    print("| crop | dtype | PSNR vs fp32 dB | max diff | values off by > 1 |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        for left, top in CORNERS:
            crop = np.array(image.crop((left, top, left + size, top + size)))
            x = torch.from_numpy(crop).permute(2, 0, 1)[None].float().div_(255)
            ref = run(x, model, torch.float32).astype(np.int16)
            for name, (net, dtype) in formats.items():
                out = run(x, net, dtype).astype(np.int16)
                diff = np.abs(out - ref)
                db, big = psnr(out, ref), float((diff > 1).mean())
                print(f"| ({left}, {top}) | {name} | {db:.1f} | {int(diff.max())} | {big:.3%} |",
                      flush=True)
                w = worst.setdefault(name, [float("inf"), 0])
                w[0], w[1] = min(w[0], db), max(w[1], int(diff.max()))
    print("summary: " + " ".join(f"psnr_{k}_db={v[0]:.1f}" for k, v in worst.items()) + " "
          + " ".join(f"max_diff_{k}={v[1]}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
