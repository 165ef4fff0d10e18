"""ncnn backend: Real-ESRGAN's own ncnn models (and any ncnn ``.param``/``.bin`` pair), CPU or Vulkan.

This is what ``realesrgan-ncnn-vulkan`` runs, driven through the official ``ncnn`` Python package
instead of a subprocess, so it shares the library's tiler, progress bar and error handling.
The package is optional: ``pip install ncnn`` (in a checkout: ``pip install -e ".[ncnn]"``).

Options (keyword arguments of ``upscale()`` / ``load_upscaler()`` with ``backend="ncnn"``):
``use_gpu`` (default: only when a hardware Vulkan device exists), ``gpu_index``, ``threads``,
``winograd`` / ``sgemm`` / ``packing`` (ncnn's convolution and memory-layout speed switches, on by
default), ``fp16`` (fp16 storage and arithmetic; default on for GPUs), ``param`` / ``bin`` (an
ncnn model pair), ``input_name`` / ``output_name`` (blob names; read from the .param otherwise).

>>> from PIL import Image
>>> from pipeline_lib import upscale
>>> upscale(Image.new("RGB", (16, 12)), "realesr-animevideov3", backend="ncnn",
...         use_gpu=False, progress=False).size                        # doctest: +SKIP
(64, 48)
"""
from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import (BackendUnavailableError, InvalidParameterError, PipelineError,
                       TileOutOfMemoryError, WeightsError)
from .. import weights as W
from ..ncnn_format import parse_param
from ..registry import ModelSpec
from ..tiling import default_overlap
from . import Upscaler

__all__ = ["MAX_TILE", "VulkanDevice", "vulkan_devices", "choose_device", "blob_names", "load"]

log = logging.getLogger(__name__)

#: The most reliable tile size for Real-ESRGAN's ncnn models (larger tiles fail on some drivers).
MAX_TILE = 400
_INSTALL_HINT = "install it with `pip install ncnn` (in a checkout of pipeline_lib: `pip install -e \".[ncnn]\"`)"
_SOFTWARE = re.compile(r"llvmpipe|lavapipe|swiftshader|softpipe", re.I)
# GpuInfo.type(): 0 discrete, 1 integrated, 2 virtual, 3 cpu (software rasteriser)
_TYPE_NAMES = {0: "discrete", 1: "integrated", 2: "virtual", 3: "cpu"}


def _import_ncnn():
    try:
        import ncnn
    except ImportError as exc:
        raise BackendUnavailableError(f"the ncnn backend needs the 'ncnn' package ({exc}); "
                                      f"{_INSTALL_HINT}, or use backend='torch'.") from None
    return ncnn


@contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Silence C-level stderr while ncnn probes for Vulkan (without a loader it prints a dozen
    'dlopen failed' lines per process). Brief and once per process, so other threads' stderr
    going missing for that moment is acceptable."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class VulkanDevice:
    index: int
    name: str
    type: int

    @property
    def software(self) -> bool:
        return self.type == 3 or bool(_SOFTWARE.search(self.name))

    def describe(self) -> str:
        kind = "software" if self.software else _TYPE_NAMES.get(self.type, "unknown")
        return f"Vulkan device {self.index} '{self.name}' ({kind})"


def vulkan_devices(ncnn=None) -> list[VulkanDevice]:
    """The Vulkan devices ncnn sees (empty without a Vulkan loader/driver)."""
    ncnn = ncnn or _import_ncnn()
    with _quiet_fd2():
        count = ncnn.get_gpu_count()
    found = []
    for i in range(count):
        info = ncnn.get_gpu_info(i)
        found.append(VulkanDevice(i, str(info.device_name()), int(info.type())))
    return found


def choose_device(use_gpu: bool | None, gpu_index: int | None, ncnn=None) -> VulkanDevice | None:
    """Pick the Vulkan device to run on, or ``None`` for the CPU.

    ``use_gpu=None`` (auto) takes the best hardware device (discrete before integrated before
    virtual) and falls back to the CPU when only a software rasteriser such as llvmpipe exists:
    ncnn on llvmpipe is far slower than ncnn's CPU path and has hung on Colab. ``use_gpu=True``
    or an explicit ``gpu_index`` is obeyed even for a software device, with a warning.
    """
    if use_gpu is False:
        if gpu_index is not None:
            raise InvalidParameterError("gpu_index was given together with use_gpu=False; drop one.")
        return None
    devices = vulkan_devices(ncnn)
    if not devices:
        if use_gpu or gpu_index is not None:
            raise BackendUnavailableError(
                "use_gpu=True but ncnn finds no Vulkan device: install the Vulkan loader and a "
                "GPU driver (e.g. apt install libvulkan1 mesa-vulkan-drivers, or the NVIDIA "
                "driver's Vulkan ICD), or run with use_gpu=False.")
        log.info("ncnn: no Vulkan device found; running on the CPU")
        return None
    if gpu_index is not None:
        if not 0 <= gpu_index < len(devices):
            raise InvalidParameterError(
                f"gpu_index={gpu_index} but ncnn sees {len(devices)} Vulkan device(s): " +
                "; ".join(d.describe() for d in devices) + ".")
        chosen = devices[gpu_index]
    else:
        chosen = min(devices, key=lambda d: (d.software, d.type, d.index))
    if chosen.software:
        if use_gpu or gpu_index is not None:
            log.warning("ncnn: using %s as asked; software Vulkan is much slower than the CPU "
                        "path (use_gpu=False)", chosen.describe())
        else:
            log.warning("ncnn: only %s is available; running on the CPU instead (pass "
                        "use_gpu=True to force it)", chosen.describe())
            return None
    log.info("ncnn: running on %s", chosen.describe())
    return chosen


def blob_names(param: Path) -> tuple[str, str]:
    """(input, output) blob names: the first Input layer's output and the last layer's output."""
    try:
        layers = parse_param(param.read_text(), str(param))
    except UnicodeDecodeError:
        raise WeightsError(f"{param}: not a text .param file (binary .param.bin files are not "
                           "supported; use the text .param).") from None
    inputs = [layer for layer in layers if layer.type == "Input" and layer.outputs]
    if not inputs or not layers[-1].outputs:
        raise WeightsError(f"{param}: no Input layer or no output blob found; pass "
                           "input_name=... and output_name=...")
    return inputs[0].outputs[0], layers[-1].outputs[0]


def _model_files(target, param, bin_) -> tuple[Path, Path, str, ModelSpec | None]:
    if param is not None:
        p = Path(param).expanduser()
        b = Path(bin_).expanduser() if bin_ is not None else p.with_suffix(".bin")
        return p, b, str(p), None
    if isinstance(target, ModelSpec):
        if not target.ncnn_stem:
            raise InvalidParameterError(f"{target.name} has no ncnn model; use backend='torch'.")
        p, b = W.ncnn_files(target.ncnn_stem)
        return p, b, target.name, target
    text = str(target)
    if text.startswith(("https://", "http://")):
        raise InvalidParameterError("the ncnn backend loads local .param/.bin files, not URLs; "
                                    "download both files and pass the .param path.")
    path = Path(text).expanduser()
    if path.suffix.lower() == ".bin":
        p, b = path.with_suffix(".param"), Path(bin_) if bin_ else path
    elif path.suffix.lower() == ".param":
        p, b = path, Path(bin_).expanduser() if bin_ else path.with_suffix(".bin")
    else:
        raise InvalidParameterError(f"{path}: the ncnn backend needs an ncnn .param file (with its "
                                    ".bin beside it or bin=...); for .pth/.safetensors use "
                                    "backend='torch'.")
    return p, b, str(path), None


def _device_request(device, use_gpu, gpu_index) -> tuple[bool | None, int | None]:
    """Fold the generic ``device`` argument ("cpu", "gpu", "vulkan:1", "cuda:0") into the options."""
    if device is None or str(device) in ("", "auto"):
        return use_gpu, gpu_index
    text = str(device).lower()
    kind, _, idx = text.partition(":")
    if kind == "cpu":
        return (False if use_gpu is None else use_gpu), gpu_index
    if kind in ("gpu", "vulkan", "cuda"):
        if idx and gpu_index is None:
            if not idx.isdigit():
                raise InvalidParameterError(f"device {device!r}: the index must be a number.")
            gpu_index = int(idx)
        return (True if use_gpu is None else use_gpu), gpu_index
    raise InvalidParameterError(f"the ncnn backend runs on 'cpu' or a Vulkan GPU ('gpu', "
                                f"'vulkan:N'), not {device!r}.")


def _check_files(param_path: Path, bin_path: Path) -> None:
    for f in (param_path, bin_path):
        if not f.is_file():
            raise WeightsError(f"{f}: no such file; an ncnn model needs both the .param and the "
                               ".bin (pass bin=... when the .bin is not beside the .param).")


def _fp16_request(dtype, fp16: bool | None) -> bool | None:
    """Fold the generic ``dtype`` into ncnn's ``fp16`` switch (an explicit ``fp16`` wins)."""
    if dtype is None:
        return fp16
    text = str(dtype).replace("torch.", "")
    if text in ("fp16", "float16", "half"):
        return True if fp16 is None else fp16
    if text in ("fp32", "float32", "float"):
        return False if fp16 is None else fp16
    raise InvalidParameterError(f"the ncnn backend runs fp16 or fp32, not {dtype!r}.")


def _open_net(ncnn, param_path: Path, bin_path: Path, vk: VulkanDevice | None, threads: int,
              switches: dict[str, bool], fp16: bool | None):
    """An ``ncnn.Net`` with the model loaded, set up for the CPU or the Vulkan device ``vk``."""
    net = ncnn.Net()
    opt = net.opt
    opt.num_threads = threads
    opt.use_winograd_convolution = switches["winograd"]
    opt.use_sgemm_convolution = switches["sgemm"]
    opt.use_packing_layout = switches["packing"]
    if fp16 is not None or vk is not None:
        half = True if fp16 is None else bool(fp16)  # GPUs default to fp16; CPUs keep ncnn's default
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = half
    opt.use_vulkan_compute = vk is not None
    if vk is not None:
        net.set_vulkan_device(vk.index)
    if net.load_param(str(param_path)) != 0 or net.load_model(str(bin_path)) != 0:
        raise WeightsError(f"ncnn could not load {param_path} / {bin_path}: the files are damaged "
                           "or do not belong together.")
    return net


def _run_fn(ncnn, net, in_blob: str, out_blob: str, vk: VulkanDevice | None):
    """``run(batch)`` for :class:`Upscaler`: one extractor per image of the batch."""

    def run(batch: np.ndarray) -> np.ndarray:
        outs = []
        for chw in batch:
            # ncnn.Mat borrows the array's memory without holding a reference: `x` and `m` must
            # stay alive until extract() has returned, or ncnn reads freed memory (garbage output).
            x = np.ascontiguousarray(chw, dtype=np.float32)
            m = ncnn.Mat(x)
            ex = net.create_extractor()
            ex.input(in_blob, m)
            ret, y = ex.extract(out_blob)
            if ret != 0:
                del ex
                if vk is not None:  # allocation failures are what the tiler can cure
                    raise TileOutOfMemoryError(f"ncnn failed on a {x.shape[1]}×{x.shape[2]} tile "
                                               f"on {vk.describe()} (code {ret})")
                raise PipelineError(f"ncnn failed on a {x.shape[1]}×{x.shape[2]} tile (code {ret}).")
            out = np.array(y, dtype=np.float32)  # copy out before the extractor frees the blob
            del ex, m, x
            outs.append(np.clip(out, 0.0, 1.0, out=out))
        return np.stack(outs)

    return run


def _probe_scale(run, param_path: Path) -> int:
    """An arbitrary pair does not declare its factor: measure it on a tiny probe."""
    probe = run(np.zeros((1, 3, 16, 16), np.float32))
    if probe.ndim != 4 or probe.shape[1] != 3 or probe.shape[2] % 16 or probe.shape[3] % 16 \
            or probe.shape[2] != probe.shape[3]:
        raise WeightsError(f"{param_path}: output of shape {probe.shape[1:]} for a 3×16×16 "
                           "input; only RGB models with an integer scale are supported.")
    return probe.shape[2] // 16


def _vulkan_device(device, use_gpu, gpu_index, ncnn) -> VulkanDevice | None:
    vk = choose_device(*_device_request(device, use_gpu, gpu_index), ncnn)
    if vk is not None:
        from ...gpu_guard import evict_gpu_models

        evict_gpu_models(f"ncnn Vulkan upscaling on {vk.describe()}")
    return vk


def load(target: ModelSpec | str | Path, device=None, dtype=None, progress: bool = True, *,
         use_gpu: bool | None = None, gpu_index: int | None = None, threads: int | None = None,
         winograd: bool = True, sgemm: bool = True, packing: bool = True,
         fp16: bool | None = None, param: str | Path | None = None, bin: str | Path | None = None,
         input_name: str | None = None, output_name: str | None = None) -> Upscaler:
    """Load an ncnn model: a registry spec with an ncnn model, or a ``.param`` (+ ``.bin``)."""
    ncnn = _import_ncnn()
    param_path, bin_path, name, spec = _model_files(target, param, bin)
    _check_files(param_path, bin_path)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidParameterError(f"threads must be a positive integer, got {threads!r}.")
    fp16 = _fp16_request(dtype, fp16)
    vk = _vulkan_device(device, use_gpu, gpu_index, ncnn)
    in_blob, out_blob = blob_names(param_path)
    in_blob, out_blob = input_name or in_blob, output_name or out_blob
    n_threads = threads or max(1, ncnn.get_big_cpu_count())
    net = _open_net(ncnn, param_path, bin_path, vk, n_threads,
                    dict(winograd=winograd, sgemm=sgemm, packing=packing), fp16)
    run = _run_fn(ncnn, net, in_blob, out_blob, vk)
    scale = spec.scale if spec is not None else _probe_scale(run, param_path)
    compact = bin_path.stat().st_size < 8 << 20  # SRVGG-class models are small and light per pixel
    return Upscaler(
        name=name, backend="ncnn", scale=scale, run=run,
        device="cpu" if vk is None else f"vulkan:{vk.index}",
        dtype="fp16" if (vk is not None and fp16 is not False) or fp16 else "fp32",
        default_tile=MAX_TILE if compact else 200, max_tile=MAX_TILE,
        default_scale=spec.default_scale if spec else None, release=net.clear,
        architecture="ncnn", weights=str(param_path), native=net, threads=n_threads,
        overlap=default_overlap(spec.arch if spec else None))
