"""What each reduced precision costs in pixels: Real-ESRGAN x4plus in fp16 and bf16 against fp32,
same weights, same crops of assets/astronaut.png, outputs rounded to 8 bits as saved images are.

This is why the library's formats are what they are: fp16 is the default on a GPU; on a CPU with
native bf16 (3-4× faster where AMX computes it, bench/upscale.py) bf16 is the default for ESRGAN
and SRVGG compact models, with the residual sums kept in fp32 around bf16 convolutions (row
``bf16_fp32_residual``; for SRVGG, the sum with the upsampled input), because with 8 significant
bits against fp16's 11 the whole-bf16 model drifts further over x4plus's 69 residual sums.

    python bench/precision.py                 # three 128² crops on the default device
    python bench/precision.py --quick         # three 64² crops (CPU fp16 is emulated: slow)
    python bench/precision.py --device cuda
    python bench/precision.py --more --formats bf16 bf16_fp32_residual --models realesrgan-x4plus realesr-animevideov3
                                              # the photos and textures README's table states

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
TEXTURES = HERE.parent / "tests" / "data"


def images(size: int, more: bool) -> dict[str, "np.ndarray"]:  # noqa: F821
    """Crops of the astronaut; with ``more``, also of scikit-image's CC0 / public-domain photos
    (cat, coffee, rocket; when scikit-image is installed) and the texture crops in tests/data."""
    import numpy as np
    from PIL import Image

    photo = np.asarray(Image.open(ASSET).convert("RGB"))
    out = {f"astronaut{c}": photo[c[1]:c[1] + size, c[0]:c[0] + size] for c in CORNERS}
    if not more:
        return out
    try:
        import skimage.data as d

        for name in ("chelsea", "coffee", "rocket"):
            img = getattr(d, name)()
            top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
            out[name] = img[top:top + size, left:left + size]
    except ImportError:
        print("(scikit-image not installed: its photos are skipped)")
    for f in sorted(TEXTURES.glob("*.png")):
        out[f.stem] = np.asarray(Image.open(f).convert("RGB"))[:size, :size]
    return out


def formats(model, device, fp16: bool) -> dict:
    """name → (module, dtype its input takes), each made from the fp32 weights: casting one
    module back and forth would leave fp32 holding rounded weights."""
    import torch

    from pipeline_lib.upscale.backends.mixed_bf16 import bf16_with_fp32_residual

    out = {"fp16": (copy.deepcopy(model).to(torch.float16), torch.float16)} if fp16 else {}
    if device.type == "cpu" or torch.cuda.is_bf16_supported():  # P100, T4: no bf16 convolutions
        out["bf16"] = (copy.deepcopy(model).to(torch.bfloat16), torch.bfloat16)
    if device.type == "cpu":  # the CPU's bf16 path: bf16 convolutions, fp32 residual sums
        mixed = copy.deepcopy(model)
        if not bf16_with_fp32_residual(mixed):  # not an assert: python -O would skip it
            raise SystemExit("the model no longer has a layout mixed_bf16.py rewrites")
        out["bf16_fp32_residual"] = (mixed, torch.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64² crops instead of 128²")
    p.add_argument("--size", type=int, help="crop side (default 128; 64 with --quick)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--models", nargs="+", default=["realesrgan-x4plus"])
    p.add_argument("--more", action="store_true",
                   help="also scikit-image's photos and the texture crops in tests/data")
    p.add_argument("--formats", nargs="+", choices=["fp16", "bf16", "bf16_fp32_residual"],
                   help="which reduced formats (default: all the device has; fp16 on a CPU is "
                        "emulated and slow)")
    a = p.parse_args(argv)

    import numpy as np
    import torch
    from spandrel import ModelLoader

    import pipeline_lib  # noqa: F401  (huge pages for torch's CPU tensors, as in real runs)
    from pipeline_lib.upscale.backends.torch_backend import load_state_dict
    from pipeline_lib.upscale.registry import MODELS
    from pipeline_lib.upscale.weights import converted_from_ncnn

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = a.size or (64 if a.quick else 128)
    crops = images(size, a.more)
    print(f"torch {torch.__version__} on {device}; {', '.join(a.models)} on {size}² crops, "
          "outputs in 8-bit levels")

    def run(x: torch.Tensor, net, dtype: torch.dtype) -> np.ndarray:
        x = x.to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        y = net(x)
        return (y.float().clamp_(0, 1) * 255).round_().to(torch.uint8).cpu().numpy()

    worst = {}
    print("| model | crop | dtype | PSNR vs fp32 dB | max diff | values off by > 1 |")
    print("|---|---|---|---|---|---|")
    for model_name in a.models:
        model = ModelLoader().load_from_state_dict(
            load_state_dict(converted_from_ncnn(MODELS[model_name]))).model.eval()
        model = model.to(device=device, memory_format=torch.channels_last)
        nets = {k: v for k, v in formats(model, device, "fp16" in (a.formats or ["fp16"])).items()
                if a.formats is None or k in a.formats}
        with torch.inference_mode():
            for crop_name, crop in crops.items():
                x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float().div_(255)
                ref = run(x, model, torch.float32).astype(np.int16)
                for name, (net, dtype) in nets.items():
                    out = run(x, net, dtype).astype(np.int16)
                    diff = np.abs(out - ref)
                    db, big = psnr(out, ref), float((diff > 1).mean())
                    print(f"| {model_name} | {crop_name} | {name} | {db:.1f} | {int(diff.max())} "
                          f"| {big:.3%} |", flush=True)
                    w = worst.setdefault(f"{model_name}:{name}", [float("inf"), 0])
                    w[0], w[1] = min(w[0], db), max(w[1], int(diff.max()))
    print("summary: " + " ".join(f"psnr_{k}_db={v[0]:.1f}" for k, v in worst.items()) + " "
          + " ".join(f"max_diff_{k}={v[1]}" for k, v in worst.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
