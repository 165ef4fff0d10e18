"""Where results land: atomic writes, free file names and the suffix tables, each rule once.

A finished file appears in one step (temp file beside it, then a rename or link), so readers
never see half a file, and an existing file is never replaced unless ``overwrite`` is asked for
(:class:`OutputExistsError`), even when another process creates it while we write.

>>> sorted(IMAGE_SUFFIXES)[:3]
['.bmp', '.jpeg', '.jpg']
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputExistsError

__all__ = ["IMAGE_SUFFIXES", "ANIMATED_SUFFIXES", "VIDEO_SUFFIXES", "MEDIA_SUFFIXES",
           "atomic_output", "atomic_write", "publish_file", "free_name", "save_to_free_name",
           "refuse_existing"]

log = logging.getLogger(__name__)

#: Still images ``save_image`` writes and the CLI collects from folders.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
#: Formats that can hold several frames (a PNG/WebP is animated only when it has them).
ANIMATED_SUFFIXES = frozenset({".gif", ".webp", ".png", ".apng"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
#: Everything the upscaler reads: stills, animations and videos.
MEDIA_SUFFIXES = IMAGE_SUFFIXES | ANIMATED_SUFFIXES | VIDEO_SUFFIXES


def refuse_existing(dest: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``dest`` exists and may not be replaced."""
    if not overwrite and dest.exists():
        raise OutputExistsError(f"{dest} already exists; pass overwrite=True (CLI: --overwrite) "
                                "or choose another name.")


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike, *, overwrite: bool = True,
                  keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; publish it as ``dest`` only if the block succeeds.

    The temp name carries this process's id, so a later writer can delete what a killed one left
    behind. ``keep_suffix`` ends the temp name with ``dest``'s suffix (writers such as FFmpeg
    pick the container from it).
    """
    dest = Path(dest)
    refuse_existing(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.",
                               suffix=".part" + (dest.suffix if keep_suffix else ""),
                               dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish_file(tmp, dest, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (synced to disk before it appears); return the path."""
    dest = Path(path)
    with atomic_output(dest, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return dest


def publish_file(tmp: str | os.PathLike, dest: Path, overwrite: bool = False) -> None:
    """Move a finished temp file (same folder as ``dest``) into place in one atomic step.

    Without ``overwrite`` an existing ``dest`` is never replaced, even one created meanwhile.
    """
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # atomic "create if absent"
    except FileExistsError:
        raise OutputExistsError(f"{dest} appeared while writing; not overwritten.") from None
    except OSError:  # file systems without hard links
        if dest.exists():
            raise OutputExistsError(f"{dest} already exists; not overwritten.") from None
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


def free_name(folder: str | os.PathLike, stem: str, suffix: str = ".png") -> Path:
    """``<stem><suffix>``, or ``<stem>-1<suffix>``, ``<stem>-2<suffix>``… — never an existing file."""
    folder = Path(folder)
    dest, n = folder / f"{stem}{suffix}", 0
    while dest.exists():
        n += 1
        dest = folder / f"{stem}-{n}{suffix}"
    return dest


def save_to_free_name(folder: str | os.PathLike, stem: str, write: Callable[[Path], Path],
                      suffix: str = ".png") -> Path:
    """Call ``write(dest)`` with a free name; when another process takes that name between the
    check and the write (:class:`OutputExistsError`), try the next one."""
    for _ in range(100):
        try:
            return write(free_name(folder, stem, suffix))
        except OutputExistsError:
            continue
    raise OutputExistsError(f"no free name for {stem}{suffix} in {folder} after 100 tries.")


def _remove_stale_parts(dest: Path) -> None:
    """Delete temp files a killed writer of ``dest`` left behind (``.NAME.PID.xxx.part*`` whose
    PID is gone); a live writer's temp file is left alone."""
    for part in dest.parent.glob(f".{glob_escape(dest.name)}.*.part*"):
        pid = part.name[len(dest.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            part.unlink()
            log.info("removed %s, left by an interrupted run", part)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but not ours (EPERM), or a platform without signals
        return True
    return True
