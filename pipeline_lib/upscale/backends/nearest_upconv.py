"""Nearest ×2 upsampling + 3×3 convolution, computed without the upsampled copy.

ESRGAN-family models upsample with ``Upsample(scale_factor=2, mode="nearest")`` followed by a 3×3
convolution. Every output pixel of that pair sees only a 2×2 neighbourhood of the low-resolution
input, with taps that are sums of the 3×3 kernel's taps, one kernel per output phase (row parity,
column parity). So one 2×2 convolution with 4× the output channels, read back phase by phase,
gives the same function with 4 instead of 9 multiply-adds per output value and no 4×-sized
intermediate. On the CPU this made x4plus's up-convolution stages 1.8-2.1× faster (AVX-512 and
AVX2), ~1.5 % of the whole model, below run-to-run noise (bench/fused_upconv.py). PyTorch has no
such fused primitive.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NearestUpConv2x", "rewrite_nearest_upconv"]

# Which of the 3 kernel rows each phase's 2 taps sum: phase 0 reads input rows (i-1, i, i), so its
# taps are (W0, W1+W2) at offsets (-1, 0); phase 1 reads (i, i, i+1): (W0+W1, W2) at (0, +1).
_PHASE_TAPS = torch.tensor([[[1., 0, 0], [0, 1, 1]], [[1., 1, 0], [0, 0, 1]]], dtype=torch.float64)
_PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


class NearestUpConv2x(nn.Module):
    """``Upsample(scale_factor=2, mode="nearest")`` then ``conv``, as one 2×2 convolution."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        w = conv.weight.detach().double()
        phases = [torch.einsum("pk,oikl,ql->oipq", _PHASE_TAPS[a], w, _PHASE_TAPS[b])
                  for a, b in _PHASES]
        self.out_channels = conv.out_channels
        self.register_buffer("weight", torch.cat(phases).to(conv.weight.dtype).contiguous())
        self.register_buffer("bias", conv.bias.detach().repeat(4).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        # a 2×2 kernel with padding 1 gives (h+1)×(w+1) outputs; phase (a, b) is the h×w window at (a, b)
        y = F.conv2d(x, self.weight, self.bias, padding=1)
        c = self.out_channels
        fmt = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
               else torch.contiguous_format)
        out = torch.empty((n, c, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=fmt)
        for i, (a, b) in enumerate(_PHASES):
            out[:, :, a::2, b::2] = y[:, i * c:(i + 1) * c, a:a + h, b:b + w]
        return out


def _is_nearest_x2(m: nn.Module) -> bool:
    return (isinstance(m, nn.Upsample) and m.mode == "nearest" and m.size is None
            and m.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)))


def _is_plain_conv3(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.padding == (1, 1) and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros" and m.bias is not None)


def rewrite_nearest_upconv(module: nn.Module) -> int:
    """In every ``nn.Sequential`` of ``module``, replace each nearest-×2 ``Upsample`` directly
    followed by a plain 3×3 ``Conv2d`` with one :class:`NearestUpConv2x` (in place); returns how
    many pairs were replaced. Only for models that run their Sequentials whole (ESRGAN does).

    >>> from spandrel.architectures.ESRGAN import ESRGAN
    >>> rewrite_nearest_upconv(ESRGAN(num_blocks=1, scale=4).eval())  # two ×2 stages
    2
    """
    count = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq)
        for i in range(len(kids) - 1):
            if _is_nearest_x2(kids[i]) and _is_plain_conv3(kids[i + 1]):
                seq[i] = nn.Identity()
                seq[i + 1] = NearestUpConv2x(kids[i + 1])
                count += 1
    return count
