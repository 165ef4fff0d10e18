"""OpenVINO backend: a spandrel model exported once to OpenVINO IR, run by OpenVINO's CPU plugin
(or an Intel GPU, ``device="gpu.0"``).

The export (``openvino.convert_model`` of the fp32 PyTorch model, dynamic height and width,
weights kept fp32) is written to the cache under a key of the weights' sha256 and the OpenVINO
version, file by file through :func:`pipeline_lib.outputs.atomic_output`, and a manifest of the
files' sha256 sums written last marks it complete: an entry that fails its manifest (truncated,
damaged, half-written) is exported again. Compiled models go to OpenVINO's own cache
(``CACHE_DIR``), so a second process imports instead of recompiling.

Precision follows the torch backend's rule (:func:`.torch_backend.choose_dtype`): fp32, or bf16
where the CPU computes it natively (then also the default for ESRGAN and SRVGG models); fp32
gives torch's fp32 pixels (tests/test_openvino_backend.py). Optional: ``pip install openvino``.

Options: ``threads`` (inference threads; default: OpenVINO's choice).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import (BackendUnavailableError, InvalidParameterError, TileOutOfMemoryError,
                       WeightsError)
from ...outputs import atomic_output, atomic_write
from .. import weights as W
from ..registry import ModelSpec
from ..tiling import default_overlap
from . import Upscaler

__all__ = ["ir_folder", "export_ir", "openvino_device", "load", "OpenVinoModel"]

log = logging.getLogger(__name__)

@dataclass
class OpenVinoModel:
    """What a loaded OpenVINO upscaler runs (``Upscaler.native``) and where it came from."""

    compiled: Any
    ir: str  # the IR folder in the cache
    version: str  # OpenVINO's version
    precision_hint: str  # f32 / bf16 / f16
    loaded_from_cache: bool  # the compiled model came from OpenVINO's own cache


_FILES = ("model.xml", "model.bin")
_MANIFEST = "manifest.json"
_PRECISION = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def _import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"the openvino backend needs the 'openvino' package ({exc}): "
                                      "pip install openvino, or use backend='torch'.") from None
    return openvino


def ir_folder(weights: Path, ov_version: str) -> Path:
    """The cache folder of one model's IR: keyed by the weights' sha256 and OpenVINO's version
    (IR written by one version is not promised to load in another)."""
    version = re.sub(r"[^\w.]+", "_", ov_version.split("-")[0])
    return W.cache_dir() / "openvino" / f"{W.sha256_file(weights)[:32]}-ov{version}"


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds an IR whose files match the manifest written after them."""
    try:
        sums = json.loads((folder / _MANIFEST).read_text())
        return all(W.sha256_file(folder / f) == sums[f] for f in _FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def export_ir(desc, folder: Path) -> Path:
    """Export spandrel model ``desc`` (fp32) to ``folder``/model.xml + .bin; returns the .xml."""
    import torch

    ov = _import_openvino()
    req = desc.size_requirements
    side = max(req.minimum, 32)
    side = math.ceil(side / max(1, req.multiple_of)) * max(1, req.multiple_of)
    module = desc.model.float().eval()
    try:  # convert_model traces with torch.jit, which warns that it is deprecated: not ours
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = ov.convert_model(module, example_input=torch.zeros(1, 3, side, side),
                                     input=[ov.PartialShape([-1, 3, -1, -1])])
    except Exception as exc:
        raise BackendUnavailableError(f"OpenVINO cannot convert {desc.architecture.name} "
                                      f"({type(exc).__name__}: {exc}); use backend='torch'.") from None
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    try:
        ov.save_model(model, str(work / "model.xml"), compress_to_fp16=False)  # fp32 = torch's pixels
        for name in _FILES:
            with atomic_output(folder / name) as tmp:
                os.replace(work / name, tmp)
        sums = {name: W.sha256_file(folder / name) for name in _FILES}
        atomic_write(folder / _MANIFEST, json.dumps(sums).encode(), overwrite=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / "model.xml"


def _read_ir(core, desc, weights: Path, version: str):
    """The IR of ``weights`` from the cache, exported (again) when missing or damaged."""
    from filelock import FileLock

    folder = ir_folder(weights, version)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):  # one process exports, the others wait and read
        if not _complete(folder):
            if (folder / _MANIFEST).exists() or (folder / "model.xml").exists():
                log.warning("the OpenVINO IR in %s is damaged or incomplete; exporting it again",
                            folder)
            else:
                log.info("exporting %s to OpenVINO IR in %s (once per weights and OpenVINO "
                         "version)", weights.name, folder)
            export_ir(desc, folder)
        try:
            return core.read_model(str(folder / "model.xml")), folder
        except Exception as exc:
            raise WeightsError(f"OpenVINO cannot read its IR in {folder} ({exc}); delete the "
                               "folder and run again.") from None


def openvino_device(device, available: list[str]) -> str:
    """OpenVINO's name for ``device``: None/'cpu' → 'CPU', 'gpu' / 'gpu.1' / 'gpu:1' → 'GPU.1'."""
    text = "cpu" if device is None else str(device).strip().lower().replace(":", ".")
    if not re.fullmatch(r"(cpu|gpu)(\.\d+)?", text) or text.startswith("cpu."):
        raise InvalidParameterError(f"the openvino backend runs on 'cpu' or an Intel GPU ('gpu', "
                                    f"'gpu.0'), not {device!r}.")
    name = text.upper()
    if name not in available and not (name == "GPU" and any(d.startswith("GPU") for d in available)):
        raise BackendUnavailableError(f"OpenVINO has no device {name}; it sees "
                                      f"{', '.join(available) or 'none'}. Use device='cpu'.")
    return name


def _precision(desc, ov_device: str, dtype, name: str):
    """(torch dtype name, OpenVINO hint) as the torch backend would choose on a CPU; Intel GPUs
    run fp16 unless fp32 is asked for."""
    import torch

    from ...devices import resolve_dtype
    from .torch_backend import choose_dtype, note_default_bf16

    if ov_device.startswith("GPU"):
        dt = resolve_dtype(dtype)
        dt = torch.float32 if dt == torch.float32 else torch.float16
    else:
        dt = choose_dtype(desc, torch.device("cpu"), dtype, name)
        if dtype is None and dt == torch.bfloat16:
            note_default_bf16(name)
    text = str(dt).replace("torch.", "")
    return text, _PRECISION[text]


def _run_fn(compiled, desc):
    """``run(batch)`` for :class:`Upscaler`: pads to the sizes the model takes (edge pixels
    repeated, as the torch backend), crops its output back, clamps to 0..1."""
    req, scale, lock = desc.size_requirements, desc.scale, threading.Lock()
    minimum, multiple = max(1, req.minimum), max(1, req.multiple_of)

    def run(batch: np.ndarray) -> np.ndarray:
        h, w = batch.shape[-2:]
        ph = max(minimum, math.ceil(h / multiple) * multiple) - h
        pw = max(minimum, math.ceil(w / multiple) * multiple) - w
        x = np.pad(batch, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge") if ph or pw else batch
        try:
            with lock:  # one infer request, reused: calls take turns
                y = compiled(np.ascontiguousarray(x, dtype=np.float32))[0]
        except RuntimeError as exc:
            if "alloc" in str(exc).lower() or "memory" in str(exc).lower():
                raise TileOutOfMemoryError(f"OpenVINO out of memory on a {h}×{w} tile") from None
            raise
        y = np.array(y[..., : h * scale, : w * scale], dtype=np.float32)
        return np.clip(y, 0.0, 1.0, out=y)

    return run


def load(target: ModelSpec | str | Path, device=None, dtype=None, progress: bool = True, *,
         threads: int | None = None) -> Upscaler:
    """Load ``target`` (registry spec, weight file or URL, as the torch backend takes) on OpenVINO."""
    ov = _import_openvino()
    from .torch_backend import cpu_tile, read_model

    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                or threads < 1):
        raise InvalidParameterError(f"threads must be a positive integer, got {threads!r}.")
    core = ov.Core()
    ov_device = openvino_device(device, core.available_devices)
    desc, path, name = read_model(target, progress)
    dtype_name, hint = _precision(desc, ov_device, dtype, name)
    model, folder = _read_ir(core, desc, path, ov.__version__)
    core.set_property({"CACHE_DIR": str(folder.parent / "compiled")})
    config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, ov_device, config)
    whole_only = desc.tiling.name != "SUPPORTED"
    return Upscaler(
        name=name, backend="openvino", scale=desc.scale, run=_run_fn(compiled, desc),
        device=ov_device.lower(), dtype=dtype_name, default_tile=0 if whole_only else cpu_tile(desc),
        default_scale=target.default_scale if isinstance(target, ModelSpec) else None,
        architecture=desc.architecture.name, weights=str(path),
        native=OpenVinoModel(compiled, str(folder), ov.__version__, hint,
                             bool(compiled.get_property("LOADED_FROM_CACHE"))),
        tiling=desc.tiling.name.lower(), overlap=default_overlap(desc.architecture.id))
