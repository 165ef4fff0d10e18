"""``python -m pipeline_lib upscale INPUT... -o OUT``: flags → :func:`pipeline_lib.files.upscale_files`,
its per-file outcomes → lines on stdout/stderr and the exit status."""
from __future__ import annotations

import argparse
import sys

from ..files import OUTPUT_FORMATS, FileOutcome, backend_choices, upscale_files
from ..upscale import DEFAULT_UPSCALER

__all__ = ["add_arguments", "report", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image, animated image (GIF/WebP/APNG) or video files, or folders (recursed)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (created if missing), or a file path for a single input")
    p.add_argument("-m", "--model",
                   help="registry name (list: python -m pipeline_lib models), weight file or https "
                        f"URL (default: {DEFAULT_UPSCALER})")
    p.add_argument("--fallback", action="store_true",
                   help="if the named model cannot run here, use the automatic chain instead of "
                        "failing (the summary names the model that ran)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-s", "--scale", type=float, help="output factor, e.g. 2, 3.2, 4, 8")
    g.add_argument("--size", help="target: N (long side) or WxH (exact)")
    p.add_argument("--tile", type=int, help="tile size in input px (0 = no tiling; default: auto)")
    p.add_argument("--overlap", type=int, help="tile overlap in input px (default 32)")
    p.add_argument("--backend", default="auto",
                   help=f"{', '.join(backend_choices())} (default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", help="fp16, bf16 or fp32 (default: fp16 on CUDA; bf16 on CPUs with "
                   "native bf16 for ESRGAN/SRVGG models, ~55 dB against fp32; else fp32)")
    p.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="output format (default png; 'keep' uses the input's); animations keep "
                        "theirs unless png or webp is asked, videos always keep theirs")
    p.add_argument("--suffix", default="_upscaled", help="added to output names (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace) -> int:
    quiet = getattr(args, "quiet", False)
    outcomes = upscale_files(args.inputs, args.output, model=args.model, scale=args.scale,
                             size=args.size, tile=args.tile, overlap=args.overlap,
                             backend=args.backend, device=args.device, dtype=args.dtype,
                             format=args.format, suffix=args.suffix, overwrite=args.overwrite,
                             progress=not quiet, fallback=args.fallback)
    return report(outcomes, quiet=quiet)


def report(outcomes: list[FileOutcome], *, quiet: bool = False) -> int:
    """Print one line per file and a summary naming the model(s) that ran; return the exit status."""
    for o in outcomes:
        if o.status == "failed":
            print(f"{o.source}: failed: {o.message}", file=sys.stderr)
        elif o.status == "skipped":
            print(f"{o.source}: skipped, {o.message}")
        elif not quiet:
            print(f"{o.source} → {o.dest}  {o.size[0]}x{o.size[1]}  {o.model}/{o.backend}  "
                  f"{o.seconds:.1f}s")
    count = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    ran = dict.fromkeys(f"{o.model} on {o.backend}" for o in outcomes if o.status == "done")
    print(f"{count['done']} upscaled, {count['skipped']} skipped, {count['failed']} failed"
          + (f"; ran {', '.join(ran)}" if ran else ""))
    return 1 if count["failed"] else 0
