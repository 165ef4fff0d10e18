"""Seams of tiled upscaling: tile × overlap → PSNR against the untiled output, and the cost.

For each model and image the untiled output is the reference; for each (tile, overlap) the tiles
run once and are blended by the library's own tiler (``run_tiled``), so the numbers are what
``upscale(tile=..., overlap=...)`` gives. Reported per row: PSNR and the largest difference (of
255) against untiled, the work (network input pixels over image pixels: the deterministic part
of the cost) and the measured time over the untiled time (noisy on a shared machine).

Images (192², all public domain / CC0): a crop of assets/astronaut.png (photo) and two hard
textures from tests/data (made by ``python bench/seams.py --make-textures`` from scikit-image's
CC0 samples): ``gravel`` (gray gravel) and ``mix`` (gravel, grass and brick as the three colour
channels: fine detail in every channel, harder than any photo).

    python bench/seams.py                       # x4plus and animevideov3, tile 128 and 96
    python bench/seams.py --models realesr-animevideov3 --tiles 128 --overlaps 16 32
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import _common as C  # noqa: E402

DATA = ROOT / "tests" / "data"
SIDE = 192


def make_textures() -> None:
    """Write the two texture crops from scikit-image's CC0 samples (needs scikit-image)."""
    import skimage.data as d
    from PIL import Image

    box = (slice(100, 100 + SIDE), slice(100, 100 + SIDE))
    DATA.mkdir(parents=True, exist_ok=True)
    gravel = d.gravel()[box]
    Image.fromarray(np.dstack([gravel] * 3)).save(DATA / "gravel-192.png")
    mix = np.dstack([d.gravel()[box], d.grass()[box], d.brick()[box]])
    Image.fromarray(mix).save(DATA / "texture-mix-192.png")


def images() -> dict[str, np.ndarray]:
    from PIL import Image

    photo = np.asarray(Image.open(ROOT / "assets" / "astronaut.png").convert("RGB"))
    out = {"photo": photo[100:100 + SIDE, 150:150 + SIDE]}
    for name, file in (("gravel", "gravel-192.png"), ("mix", "texture-mix-192.png")):
        if (DATA / file).is_file():
            out[name] = np.asarray(Image.open(DATA / file).convert("RGB"))
    return out


def measure(up, img: np.ndarray, tiles: list[int], overlaps: list[int]) -> list[dict]:
    from pipeline_lib.upscale.tiling import count_tiles, effective_overlap, run_tiled, tile_layout

    chw = img.transpose(2, 0, 1).astype(np.float32) / 255
    u8 = lambda a: np.clip(a.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
    t = time.perf_counter()
    ref = u8(up.run(chw[None])[0])
    t_ref = time.perf_counter() - t
    rows = []
    for tile in tiles:
        for ov in overlaps:
            ov = effective_overlap(tile, ov)
            t = time.perf_counter()
            out = u8(run_tiled(up.run, chw, up.scale, tile, ov))
            secs = time.perf_counter() - t
            size_h, _ = tile_layout(chw.shape[1], tile, ov)
            size_w, _ = tile_layout(chw.shape[2], tile, ov)
            work = count_tiles(*chw.shape[1:], tile, ov) * size_h * size_w / (chw.shape[1] * chw.shape[2])
            rows.append({"tile": tile, "overlap": ov, "psnr_db": C.psnr(out, ref),
                         "max_diff": int(np.abs(out.astype(int) - ref).max()), "work": work,
                         "time": secs / t_ref, "untiled_s": t_ref})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["realesrgan-x4plus", "realesr-animevideov3"])
    p.add_argument("--images", nargs="+", default=None, help="photo gravel mix (default: all)")
    p.add_argument("--tiles", type=int, nargs="+", default=[128, 96])
    p.add_argument("--overlaps", type=int, nargs="+", default=[16, 32, 48, 63])
    p.add_argument("--make-textures", action="store_true")
    a = p.parse_args(argv)
    if a.make_textures:
        make_textures()
        return 0
    from pipeline_lib import load_upscaler

    print(f"machine: {C.machine_description()} (shared: times are indicative; work is exact)")
    print("| model | image | tile | overlap | PSNR vs untiled dB | max diff | work | time |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for model in a.models:
        up = load_upscaler(model, device="cpu", backend="torch", dtype="fp32", progress=False)
        for name, img in images().items():
            if a.images and name not in a.images:
                continue
            for r in measure(up, img, a.tiles, a.overlaps):
                print(f"| {model} | {name} | {r['tile']} | {r['overlap']} | {r['psnr_db']:.1f} | "
                      f"{r['max_diff']} | {r['work']:.2f}× | {r['time']:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
