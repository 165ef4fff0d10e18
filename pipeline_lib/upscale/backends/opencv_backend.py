"""OpenCV backend: ``cv2.dnn_superres`` (EDSR, ESPCN, FSRCNN, FSRCNN-small, LapSRN).

Needs no torch, so it is what ``upscale(backend="auto")`` falls back to. The small models ship as
package data (checked against ``SHA256SUMS`` on every load); EDSR downloads on first use through
the same verified cache as the torch weights.
"""
from __future__ import annotations

import logging
import re
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from ...errors import BackendUnavailableError, InvalidParameterError, WeightsError
from ...hashing import sha256_file
from .. import weights as W
from ..registry import ModelSpec
from . import Upscaler

__all__ = ["BUNDLED_DIR", "CONTRIB_PACKAGE", "CONTRIB_FIX", "require_superres", "bundled_path",
           "load"]

log = logging.getLogger(__name__)

# Where the bundled .pb files and their SHA256SUMS live; a module attribute so tests can point
# it at a damaged copy.
BUNDLED_DIR: Path = Path(str(resources.files("pipeline_lib") / "data" / "dnn_superres"))

# OpenCV < 5.1 only: 5.1 removed the TensorFlow importer every dnn_superres .pb needs (5.0 still
# reads them, but 5.x wheels are not published for every platform yet, so the pin stays on 4.x).
CONTRIB_PACKAGE = "'opencv-contrib-python-headless<5'"
# --force-reinstall rewrites every file of the shared cv2 folder, so it repairs a cv2 that
# `pip uninstall opencv-python` half deleted and wins over the plain packages' copies whatever
# order they were installed in; --no-deps keeps the runtime's numpy (Colab/Kaggle pin one that is
# already imported: upgrading it mid-session breaks every module that uses it).
CONTRIB_FIX = f"pip install --force-reinstall --no-deps {CONTRIB_PACKAGE}"
_RESTART = " — then restart Python (on Colab/Kaggle: Runtime → Restart session)."

# Input tile (px) per algorithm. EDSR keeps ~64-256 float32 feature maps at input resolution and a
# 3·s²-channel map before its pixel shuffle: a 512² input needs well over 1 GB at once, 256² about
# a quarter of that. The other models are a few convolutions wide and run 512² tiles in tens of MB.
_TILE = {"edsr": 256, "lapsrn": 384, "espcn": 512, "fsrcnn": 512}
_FILE_NAME = re.compile(r"^(?P<stem>edsr|espcn|fsrcnn|fsrcnn-small|lapsrn)_x(?P<scale>\d+)\.pb$", re.I)



def require_superres():
    """Import cv2 and check it has the contrib module ``dnn_superres``; raise a fix-it error if not."""
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailableError(f"the opencv backend needs OpenCV with contrib modules ({exc}). "
                                      f"Fix: {CONTRIB_FIX}{_RESTART}") from None
    version = getattr(cv2, "__version__", None)
    if version is None or getattr(cv2, "dnn", None) is None:
        # Colab/Kaggle ship three OpenCV packages that share one cv2 folder; uninstalling one of
        # them deletes files the others still need and leaves an empty shell of a module.
        raise BackendUnavailableError(
            "OpenCV's cv2 package is incomplete (half deleted, typically by `pip uninstall` of one "
            f"of several installed OpenCV packages, which share its files). Fix: {CONTRIB_FIX}"
            f"{_RESTART}")
    if getattr(cv2, "dnn_superres", None) is None:
        # opencv-python and opencv-contrib-python(-headless) all install the same cv2 package;
        # whichever was installed last wins, and the plain ones lack dnn_superres.
        raise BackendUnavailableError(
            f"cv2.dnn_superres is missing: OpenCV {version} is installed without the contrib "
            "modules (the plain opencv-python / opencv-python-headless package, which shadows the "
            f"contrib build because both install 'cv2'). Fix: {CONTRIB_FIX}{_RESTART}")
    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        raise BackendUnavailableError(
            f"OpenCV {version} cannot read dnn_superres models: it has no TensorFlow (.pb) "
            f"importer (OpenCV 5.1 removed it). Fix: {CONTRIB_FIX}{_RESTART}")
    return cv2


def _bundled_sums() -> dict[str, str]:
    sums = BUNDLED_DIR / "SHA256SUMS"
    if not sums.is_file():
        raise WeightsError(f"{sums} is missing; the pipeline_lib installation is incomplete. "
                           "Reinstall pipeline_lib.")
    out = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.lstrip("*")] = digest
    return out


def bundled_path(filename: str) -> Path:
    """Path of a packaged .pb after checking it against SHA256SUMS (WeightsError if damaged)."""
    path = BUNDLED_DIR / filename
    want = _bundled_sums().get(filename)
    if want is None or not path.is_file():
        raise WeightsError(f"bundled model {path} is missing; reinstall pipeline_lib.")
    got = sha256_file(path)
    if got != want:
        raise WeightsError(f"bundled model {path} is corrupt: sha256 {got}, expected {want} "
                           "(from SHA256SUMS beside it). Reinstall pipeline_lib from its checkout "
                           "(pip install --force-reinstall --no-deps -e .).")
    return path


def _resolve(target: ModelSpec | str | Path, progress: bool) -> tuple[Path, str, int, str]:
    """(weight file, setModel algorithm, scale, display name) for a spec or a local .pb file."""
    if isinstance(target, ModelSpec):
        algo, filename = target.algo, target.file
        if not algo or not filename:
            raise InvalidParameterError(f"{target.name} is not an OpenCV dnn_superres model; "
                                        f"use backend={target.backends[0]!r}.")
        path = W.fetch(target.weights, progress=progress) if target.weights else bundled_path(filename)
        return path, algo, target.scale, target.name
    path = Path(target)
    m = _FILE_NAME.match(path.name)
    if not m:
        raise InvalidParameterError(
            f"{path.name}: the opencv backend reads dnn_superres .pb files named like the official "
            "ones (EDSR_x4.pb, ESPCN_x3.pb, FSRCNN_x2.pb, FSRCNN-small_x4.pb, LapSRN_x8.pb), which "
            "tells it the algorithm and scale; rename the file accordingly.")
    if not path.is_file():
        raise WeightsError(f"{path}: no such model file.")
    algo = "fsrcnn" if m["stem"].lower().startswith("fsrcnn") else m["stem"].lower()
    return path, algo, int(m["scale"]), str(path)


def _use_cuda(cv2, device) -> bool:
    wanted = str(device).lower() if device is not None else None
    if wanted is not None and wanted.startswith("cpu"):
        return False
    try:
        has_cuda = cv2.cuda.getCudaEnabledDeviceCount() > 0
    except (AttributeError, cv2.error):  # builds without the cuda module
        has_cuda = False
    if not has_cuda and wanted is not None and wanted.startswith("cuda"):
        log.warning("device=%r asked for, but this OpenCV build has no CUDA DNN backend (pip wheels "
                    "never do); running on CPU", device)
    return has_cuda


def load(target: ModelSpec | str | Path, device=None, dtype=None, progress: bool = True,
         **options) -> Upscaler:
    """Load a dnn_superres model (registry spec or local ``<ALGO>_x<scale>.pb``)."""
    if options:
        raise InvalidParameterError(f"the opencv backend takes no options {sorted(options)}.")
    cv2 = require_superres()
    path, algo, scale, name = _resolve(target, progress)
    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    try:
        sr.readModel(str(path))
    except cv2.error as exc:
        raise WeightsError(f"{path}: OpenCV cannot read this model ({str(exc).strip().splitlines()[-1]}); "
                           "the file is damaged or not a TensorFlow .pb. Delete it and fetch it "
                           "again.") from None
    sr.setModel(algo, scale)
    fp16 = dtype is not None and "16" in str(dtype)
    if _use_cuda(cv2, device):
        sr.setPreferableBackend(cv2.dnn.DNN_BACKEND_CUDA)
        sr.setPreferableTarget(cv2.dnn.DNN_TARGET_CUDA_FP16 if fp16 else cv2.dnn.DNN_TARGET_CUDA)
        dev, dt = "cuda", "float16" if fp16 else "float32"
    else:
        if fp16:
            log.warning("fp16 needs OpenCV's CUDA backend; %s runs in fp32 on CPU", name)
        dev, dt = "cpu", "float32"
    log.info("opencv dnn_superres %s x%d on %s (%s)", algo, scale, dev,
             "DNN_BACKEND_CUDA" if dev == "cuda" else "DNN_BACKEND_OPENCV, CPU")
    lock = threading.Lock()  # one cv2.dnn.Net must not run two forwards at once (HTTP service)

    def run(batch: np.ndarray) -> np.ndarray:
        n, _, h, w = batch.shape
        out = np.empty((n, 3, h * scale, w * scale), dtype=np.float32)
        for i, chw in enumerate(batch):
            # RGB C×H×W float → BGR H×W×C uint8: one contiguous float copy (the layout change
            # needs it), then OpenCV's saturating, rounding conversion to uint8.
            bgr = cv2.convertScaleAbs(np.ascontiguousarray(chw[::-1].transpose(1, 2, 0)), alpha=255.0)
            with lock:
                y = sr.upsample(bgr)
            if y.shape[:2] != (h * scale, w * scale):
                raise WeightsError(f"{path}: produced {y.shape[1]}×{y.shape[0]} from {w}×{h}, not "
                                   f"x{scale}; the file's scale does not match its name.")
            # back to RGB C×H×W float32 in 0..1, written straight into the output (no temporary)
            np.multiply(y.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=out[i], dtype=np.float32)
        return out

    return Upscaler(name=name, backend="opencv", scale=scale, run=run, device=dev, dtype=dt,
                    default_tile=_TILE[algo], architecture=algo.upper(), weights=str(path))
