"""Upscale many files — images, animations, videos, whole folders — with one outcome per file.

The CLI's ``upscale`` command prints what :func:`upscale_files` returns; notebooks and scripts
get the same rules: folders are searched recursively, outputs mirror the input tree, an
existing output is skipped (never replaced unless ``overwrite``), no output is written over its
own input, two inputs never share one output, and one failing file is reported while the
others still run.

>>> from pipeline_lib import upscale_files
>>> for o in upscale_files(["photos/"], "out", scale=2, progress=False):   # doctest: +SKIP
...     print(o.status, o.source, "→", o.dest)
done photos/a.jpg → out/a_upscaled.png
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .errors import InvalidParameterError, PipelineError
from .media import media_kind, upscale_media
from .outputs import MEDIA_SUFFIXES
from .upscale import BACKENDS
from .upscale.backends import get_backend
from .upscale.sizing import check_scale, parse_size
from .upscale.tiling import check_tiling
from .validation import check_callback

__all__ = ["FileOutcome", "OUTPUT_FORMATS", "backend_choices", "collect_inputs", "output_path",
           "upscale_files"]

log = logging.getLogger(__name__)

#: ``format`` values: an output suffix, or "keep" for the input's own.
OUTPUT_FORMATS = ("png", "jpg", "webp", "tif", "keep")


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file.

    ``status`` is ``"done"``, ``"skipped"`` (its output exists) or ``"failed"``; ``message``
    says why for the last two. For a finished file ``model`` and ``backend`` are what actually
    ran (after any automatic fallback), ``size`` is the output (frame) size and ``seconds`` the
    time the file took.
    """

    source: Path
    dest: Path
    status: str
    message: str = ""
    kind: str = "still"
    model: str | None = None
    backend: str | None = None
    size: tuple[int, int] | None = None
    seconds: float = 0.0


def backend_choices() -> list[str]:
    """Values ``backend`` accepts: ``"auto"`` and every registered backend."""
    return ["auto", *BACKENDS]


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(file, path relative to its input root) for every file named, and every image, animation
    or video found (recursively, hidden files left out) in a folder named."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += [(f, f.relative_to(p)) for f in sorted(p.rglob("*"))
                      if f.is_file() and f.suffix.lower() in MEDIA_SUFFIXES
                      and not f.name.startswith(".")]
        else:
            found.append((p, Path(p.name)))
    return found


def output_path(rel: Path, out: Path, single_file: bool, fmt: str, suffix: str) -> Path:
    """Where the input at ``rel`` (relative to its root) is written: ``out`` itself for a single
    file, else ``out/<rel's folder>/<stem><suffix>.<fmt>`` (``fmt="keep"``: the input's suffix)."""
    if single_file:
        return out
    ext = rel.suffix if fmt == "keep" else "." + fmt
    return out / rel.parent / f"{rel.stem}{suffix}{ext}"


def upscale_files(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                  output: str | os.PathLike, *, model: str | None = None,
                  scale: float | None = None, size=None, tile: int | None = None,
                  overlap: int | None = None, backend: str = "auto", device=None, dtype=None,
                  format: str | None = None, suffix: str = "_upscaled", overwrite: bool = False,
                  progress: bool = True, fallback: bool = False,
                  on_progress: Callable[[int, int], object] | None = None) -> list[FileOutcome]:
    """Upscale every file of ``inputs`` (files or folders) into ``output``; one outcome per file.

    ``output`` is a folder (created if missing; ``<stem><suffix>.<format>`` per input, the input
    folders' layout kept), or a file path when exactly one file is found. ``format`` is
    png (the default for stills), jpg, webp, tif or "keep"; animations keep their format unless
    png or webp is asked, videos always keep theirs. ``model`` ... ``dtype`` and ``fallback``
    are those of :func:`pipeline_lib.upscale` (``model=None``: its default, with the automatic
    chain when that cannot run). ``on_progress(done, total)`` is called after each file.

    Bad arguments raise :class:`InvalidParameterError` before any file is touched; a file that
    fails is reported in its outcome and the others still run.
    """
    size = _check_arguments(scale, size, tile, overlap, backend, device, dtype, format)
    check_callback(on_progress)
    names = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    files = collect_inputs(names)
    if not files:
        raise InvalidParameterError(f"no input images found in {', '.join(map(str, names))}; "
                                    "name image, animation or video files, or folders holding them.")
    out = Path(output)
    single = _single_output(out, len(files))
    run = dict(scale=scale, size=size, tile=tile, overlap=overlap, backend=backend,
               device=device, dtype=dtype, overwrite=overwrite, progress=progress)
    # only what was asked for: an unnamed model keeps upscale()'s own default and fallback rule
    run.update({k: v for k, v in (("model", model), ("fallback", fallback)) if v})
    from tqdm.auto import tqdm

    outcomes: list[FileOutcome] = []
    claimed: dict[Path, Path] = {}  # output → the input that wrote it in this run
    for src, rel in tqdm(files, desc="images", unit="img", disable=not progress or len(files) < 2):
        kind = media_kind(src)
        dest = output_path(rel, out, single, _format_for(kind, format), suffix)
        outcome = _refusal(src, dest, claimed, overwrite) or _upscale_one(src, dest, kind, run)
        if outcome.status == "done":
            claimed[dest.resolve()] = src
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(len(outcomes), len(files))
    return outcomes


def _check_arguments(scale, size, tile, overlap, backend, device, dtype, fmt):
    """Refuse bad arguments once, before any file, instead of failing every file the same way;
    return ``size`` parsed."""
    if scale is not None:
        check_scale(scale)
    check_tiling(tile, overlap)
    if backend != "auto":
        get_backend(backend)  # raises, naming the choices
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise InvalidParameterError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, "
                                    f"got {fmt!r}.")
    if dtype is not None or device is not None:
        try:
            from .devices import resolve_device, resolve_dtype
        except ImportError:  # no torch: the opencv fallback checks its own device
            return parse_size(size)
        resolve_dtype(dtype)
        if device is not None and backend != "opencv":
            resolve_device(device)
    return parse_size(size)


def _single_output(out: Path, count: int) -> bool:
    """True when ``out`` names the one output file; refuse a file name for several inputs."""
    looks_like_file = out.suffix.lower() in MEDIA_SUFFIXES and not out.is_dir()
    if looks_like_file and count > 1:
        raise InvalidParameterError(
            f"{out} is a file name, but {count} input files were found; give a folder as the "
            "output (CLI: -o OUTDIR, created if missing), or a single input.")
    return looks_like_file


def _format_for(kind: str, fmt: str | None) -> str:
    fmt = fmt or ("png" if kind == "still" else "keep")
    if kind == "video" or (kind == "animated" and fmt not in ("png", "webp")):
        return "keep"
    return fmt


def _refusal(src: Path, dest: Path, claimed: dict[Path, Path], overwrite: bool) -> FileOutcome | None:
    """The outcome of a file that must not run (output taken, over its input, or existing)."""
    first = claimed.get(dest.resolve())
    if first is not None:
        return FileOutcome(src, dest, "failed", f"its output {dest} is also the output of {first} "
                           "in this run; rename one of them or use format 'keep' (--format keep)")
    if dest.exists() and dest.resolve() == src.resolve():
        return FileOutcome(src, dest, "failed", "refusing to write the output over its own input")
    if dest.exists() and not overwrite:
        return FileOutcome(src, dest, "skipped",
                           f"{dest} exists (use --overwrite / overwrite=True to replace it)")
    return None


def _upscale_one(src: Path, dest: Path, kind: str, run: dict) -> FileOutcome:
    t0 = time.perf_counter()
    try:
        res = upscale_media(src, dest, **run)
    except Exception as exc:  # one odd file must not end a long batch: report it, go on
        return FileOutcome(src, dest, "failed", _reason(src, exc), kind)
    return FileOutcome(src, dest, "done", "", kind, res.model, res.backend, tuple(res.size),
                       time.perf_counter() - t0)


def _reason(src: Path, exc: Exception) -> str:
    """One line that says why a file failed (our errors already say what to change)."""
    if isinstance(exc, (PipelineError, OSError)):
        return str(exc)
    if isinstance(exc, MemoryError):  # numpy canvas allocations; the next file may still fit
        return ("out of memory; use a smaller --scale/--size or --tile, or --device cpu "
                "(Python: scale/size, tile, device='cpu')")
    log.debug("unexpected failure on %s", src, exc_info=True)
    return (f"unexpected {type(exc).__name__}: {exc} (rerun with -v, or with debug logging, for "
            "the traceback)")
