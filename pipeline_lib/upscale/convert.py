"""Turn parsed ncnn layers into the PyTorch state dicts that spandrel loads.

The Real-ESRGAN ncnn graphs are plain exports of two architectures, so the mapping is positional:
weighted layers appear in the same order as the parameters of the PyTorch module.

* RRDBNet (``realesrgan-x4plus``, ``-anime``): ``conv_first``, then per block three residual
  dense blocks of five convolutions, ``conv_body``, ``conv_up1``, ``conv_up2``, ``conv_hr``,
  ``conv_last``. The LeakyReLUs ncnn fused into the convolutions are part of the architecture.
* SRVGGNetCompact (``realesr-animevideov3``): ``body.{i}`` alternating conv / PReLU, last conv.

Only numpy is needed here; tensors are made by the caller.
"""
from __future__ import annotations

import numpy as np

from ..errors import WeightsError
from .ncnn_format import NcnnLayer

__all__ = ["rrdbnet_state_dict", "srvgg_state_dict", "CONVERTERS", "ncnn_to_state_dict"]


def _weighted(layers: list[NcnnLayer]) -> list[NcnnLayer]:
    return [layer for layer in layers if layer.blobs]


def _put(sd: dict[str, np.ndarray], prefix: str, layer: NcnnLayer) -> None:
    for key, arr in layer.blobs.items():
        sd[f"{prefix}.{key}"] = arr


def rrdbnet_state_dict(layers: list[NcnnLayer]) -> dict[str, np.ndarray]:
    """Map an RRDBNet ncnn export onto Real-ESRGAN's RRDBNet parameter names."""
    convs = _weighted(layers)
    if any(layer.type != "Convolution" for layer in convs) or (len(convs) - 6) % 15:
        raise WeightsError(f"not an RRDBNet export: {len(convs)} weighted layers "
                           "(expected 6 + 15 per block, convolutions only).")
    n_blocks = (len(convs) - 6) // 15
    sd: dict[str, np.ndarray] = {}
    it = iter(convs)
    _put(sd, "conv_first", next(it))
    for b in range(n_blocks):
        for r in range(1, 4):
            for c in range(1, 6):
                _put(sd, f"body.{b}.rdb{r}.conv{c}", next(it))
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"):
        _put(sd, name, next(it))
    return sd


def srvgg_state_dict(layers: list[NcnnLayer]) -> dict[str, np.ndarray]:
    """Map an SRVGGNetCompact ncnn export onto ``body.{i}`` parameter names."""
    weighted = _weighted(layers)
    types = [layer.type for layer in weighted]
    expected = ["Convolution", "PReLU"] * ((len(types) - 1) // 2) + ["Convolution"]
    if types != expected:
        raise WeightsError("not an SRVGGNetCompact export: expected alternating Convolution/PReLU "
                           f"layers ending in a Convolution, got {len(types)} layers.")
    sd: dict[str, np.ndarray] = {}
    for i, layer in enumerate(weighted):
        _put(sd, f"body.{i}", layer)
    return sd


CONVERTERS = {"RRDBNet": rrdbnet_state_dict, "SRVGGNetCompact": srvgg_state_dict}


def ncnn_to_state_dict(layers: list[NcnnLayer], arch: str) -> dict[str, np.ndarray]:
    try:
        convert = CONVERTERS[arch]
    except KeyError:
        raise WeightsError(f"no ncnn converter for architecture {arch!r}; "
                           f"known: {', '.join(CONVERTERS)}.") from None
    sd = convert(layers)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}
