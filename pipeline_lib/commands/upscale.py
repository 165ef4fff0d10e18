"""``python -m pipeline_lib upscale INPUT... -o OUT``."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import InvalidParameterError, PipelineError
from ..upscale.backends import BACKENDS
from ..upscale.sizing import check_scale, parse_size
from ..upscale.tiling import check_tiling

__all__ = ["IMAGE_SUFFIXES", "MEDIA_SUFFIXES", "add_arguments", "collect_inputs", "output_path",
           "run"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# animated images and videos, handled by media.upscale_file (kept in sync with media.py)
MEDIA_SUFFIXES = {".gif", ".apng", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image, animated image (GIF/WebP/APNG) or video files, or folders (recursed)")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (created if missing), or a file path for a single input")
    p.add_argument("-m", "--model", default="realesrgan-x4plus",
                   help="registry name, weight file or https URL (default: %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-s", "--scale", type=float, help="output factor, e.g. 2, 3.2, 4, 8")
    g.add_argument("--size", help="target: N (long side) or WxH (exact)")
    p.add_argument("--tile", type=int, help="tile size in input px (0 = no tiling; default: auto)")
    p.add_argument("--overlap", type=int, help="tile overlap in input px (default 32)")
    p.add_argument("--backend", default="auto", help=f"{', '.join(['auto', *BACKENDS])} "
                   "(default: %(default)s)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--dtype", help="fp16, bf16 or fp32 (default: fp16 on CUDA, else fp32; bf16 "
                   "is 2-4× faster on CPUs with native bf16, at ~55 dB against fp32)")
    p.add_argument("--format", choices=["png", "jpg", "webp", "tif", "keep"],
                   help="output format (default png; 'keep' uses the input's); animations keep "
                        "theirs unless png or webp is asked, videos always keep theirs")
    p.add_argument("--suffix", default="_upscaled", help="added to output names (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every image named or found in a folder."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if (f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | MEDIA_SUFFIXES
                        and not f.name.startswith(".")):
                    found.append((f, f.relative_to(p)))
        else:
            found.append((p, Path(p.name)))
    return found


def output_path(rel: Path, out: Path, single_file: bool, fmt: str, suffix: str) -> Path:
    if single_file:
        return out
    ext = rel.suffix if fmt == "keep" else "." + fmt
    return out / rel.parent / f"{rel.stem}{suffix}{ext}"


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad flags once, before any file, instead of failing every file the same way."""
    if args.scale is not None:
        check_scale(args.scale)
    check_tiling(args.tile, args.overlap)
    if args.backend != "auto" and args.backend not in BACKENDS:
        raise InvalidParameterError(f"unknown backend {args.backend!r}; choose one of "
                                    f"{', '.join(['auto', *BACKENDS])}.")
    if args.dtype is not None or args.device is not None:
        try:
            from ..devices import resolve_device, resolve_dtype
            resolve_dtype(args.dtype)
            if args.device is not None and args.backend != "opencv":
                resolve_device(args.device)
        except ImportError:  # no torch: the opencv fallback checks its own device
            pass


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..images import save_image
    from ..media import media_kind, upscale_file
    from ..upscale import upscale

    _check_arguments(args)
    size = parse_size(args.size) if args.size else None
    files = collect_inputs(args.inputs)
    if not files:
        print("error: no input images found", file=sys.stderr)
        return 2
    out = Path(args.output)
    single = (len(files) == 1 and out.suffix.lower() in IMAGE_SUFFIXES | MEDIA_SUFFIXES
              and not out.is_dir())
    failed = skipped = done = 0
    claimed: dict[Path, Path] = {}  # output → the input that writes it in this run
    for src, rel in tqdm(files, desc="images", unit="img", disable=len(files) < 2):
        kind = media_kind(src)
        fmt = args.format or ("png" if kind == "still" else "keep")
        if kind == "video" or (kind == "animated" and fmt not in ("png", "webp")):
            fmt = "keep"
        dest = output_path(rel, out, single, fmt, args.suffix)
        first = claimed.get(dest.resolve())
        if first is not None:
            print(f"{src}: failed: its output {dest} is also the output of {first} in this run; "
                  "rename one of them or use --format keep", file=sys.stderr)
            failed += 1
            continue
        if dest.exists() and dest.resolve() == src.resolve():
            print(f"{src}: refusing to write the output over its own input", file=sys.stderr)
            failed += 1
            continue
        if dest.exists() and not args.overwrite:
            print(f"{src}: skipped, {dest} exists (use --overwrite to replace it)")
            skipped += 1
            continue
        try:
            if kind == "still":
                res = upscale(src, args.model, scale=args.scale, size=size, tile=args.tile,
                              overlap=args.overlap, backend=args.backend, device=args.device,
                              dtype=args.dtype, full_result=True)
                save_image(res.image, dest, metadata=res.as_metadata(), overwrite=args.overwrite)
                how = f"{res.size[0]}x{res.size[1]}, {res.model}/{res.backend}, {res.seconds:.1f}s"
            else:
                upscale_file(src, dest, model=args.model, scale=args.scale, size=size,
                             overwrite=args.overwrite, tile=args.tile, overlap=args.overlap,
                             backend=args.backend, device=args.device, dtype=args.dtype)
                how = kind
        except (PipelineError, OSError) as exc:
            print(f"{src}: failed: {exc}", file=sys.stderr)
            failed += 1
            continue
        except MemoryError:  # numpy canvas allocations; the next (smaller) file may still fit
            print(f"{src}: failed: out of memory; use a smaller --scale/--size or --tile, or "
                  "--device cpu", file=sys.stderr)
            failed += 1
            continue
        except Exception as exc:  # one odd file must not end a long batch
            log.debug("unexpected failure on %s", src, exc_info=True)
            print(f"{src}: failed: unexpected {type(exc).__name__}: {exc} (rerun with -v for the "
                  "traceback)", file=sys.stderr)
            failed += 1
            continue
        claimed[dest.resolve()] = src
        done += 1
        log.info("%s → %s (%s)", src, dest, how)
    print(f"{done} upscaled, {skipped} skipped, {failed} failed")
    return 1 if failed else 0
