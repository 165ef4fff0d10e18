"""Make assets/compare_upscalers.png, the README's picture of the upscaler comparison.

The face of assets/astronaut.png (256² crop) is shrunk 4× and brought back by every upscaler
available offline, exactly as notebooks/compare_upscalers.ipynb does; one zoom-crop panel per
method, titled with its PSNR against the original and its seconds. Prints the table too.

    python bench/make_readme_figure.py [--out assets/compare_upscalers.png] [--side 256]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline_lib import compare  # noqa: E402
from pipeline_lib.notebook import demo_image  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "assets" / "compare_upscalers.png"))
    ap.add_argument("--side", type=int, default=256, help="side of the face crop (reference)")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"{out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    ref = demo_image(args.side, test=False)
    low = compare.shrink(ref, 4)
    images, table = compare.compare_upscalers(low, reference=ref, progress=False)
    print(table)
    rows = {r["model"]: r for r in table}
    pics = [ref, *images.values()]
    labels = ["original (reference)"] + [
        f"{name}\nPSNR {rows[name]['psnr']:.2f} dB, {rows[name]['seconds']:.2f}s" for name in images]
    crops = compare.zoom_crops(pics, (0.25, 0.2, 0.75, 0.7), as_figure=False, display=192)
    fig = compare.side_by_side(crops, labels, cols=4, panel=2.6)
    fig.suptitle(f"{low.width}² → {ref.width}² (×4), face region; CPU timings", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.png")
    fig.savefig(tmp, dpi=80)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
