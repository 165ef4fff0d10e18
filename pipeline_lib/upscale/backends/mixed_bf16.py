"""bf16 convolutions around an fp32 residual trunk, for ESRGAN-family models on the CPU.

Casting x4plus whole to bf16 runs its 350 convolutions on the CPU's bf16 units (AMX or
AVX512-BF16), 3-4× faster than fp32 on an AMX host, but also rounds the 64-channel trunk that 69
residual dense blocks keep adding to: bf16's 8 significant bits lose a little at every sum, and
the output drifts to ~53 dB against fp32 (up to 6 of 255 levels off). The convolutions tolerate
bf16 well; it is the running sums that do not. So here every dense block reads its input rounded
to bf16, computes its five convolutions in bf16, and adds its update to the trunk in fp32; the
trunk, the first convolution and the output convolution stay fp32, while the upsampling stages
run in bf16. Measured on three 128² crops on an AMX host (bench/precision.py): 55.7-56.9 dB
against fp32, at most 3 levels off on 0.003-0.018 % of values (whole-model bf16: 53.2-54.4 dB,
up to 6 levels, 0.1-0.6 %), as fast as whole-model bf16 to within run-to-run noise
(bench/upscale.py). Over eight 64² crops (photos with fur and grain, textures; README's precision
table) the worst is 52.5 dB and 9 levels on 0.8 % of values (whole-model bf16: 47.8 dB, 13).
Keeping the upsampling stages in fp32 as well gained ~2 dB more for ~15 % more time; they run at
4× the pixels, so they stay bf16.

spandrel's ``ResidualDenseBlock_5C.forward`` adds the residual in the dtype of its weights, so the
block's arithmetic is restated in :func:`_dense_update` (the same sums, spandrel's ESRGAN+ branch
included; a test checks that in fp32 the rewritten model computes exactly spandrel's function).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DenseBlockFp32Sum", "Cast", "bf16_with_fp32_trunk", "bf16_with_fp32_base",
           "bf16_with_fp32_residual"]


def _dense_update(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``ResidualDenseBlock_5C``'s output before its residual sum, i.e. ``x5``."""
    x1 = block.conv1(x)
    x2 = block.conv2(torch.cat((x, x1), 1))
    if block.conv1x1 is not None:
        x2 = x2 + block.conv1x1(x)
    x3 = block.conv3(torch.cat((x, x1, x2), 1))
    x4 = block.conv4(torch.cat((x, x1, x2, x3), 1))
    if block.conv1x1 is not None:
        x4 = x4 + x2
    return block.conv5(torch.cat((x, x1, x2, x3, x4), 1))


class DenseBlockFp32Sum(nn.Module):
    """A dense block whose convolutions run in ``dtype`` and whose residual sum runs in fp32."""

    def __init__(self, block: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.block = block.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dense_update(self.block, x.to(self.dtype)).float().mul_(0.2).add_(x)


class Cast(nn.Module):
    """Casts its input to ``dtype`` (the boundaries between the fp32 and bf16 parts)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


def _is_dense_block(m: nn.Module) -> bool:
    return (type(m).__name__ == "ResidualDenseBlock_5C"
            and all(hasattr(m, f"conv{i}") for i in range(1, 6)) and hasattr(m, "conv1x1"))


def bf16_with_fp32_trunk(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Rewrite an fp32 spandrel ESRGAN ``model`` (in place) to compute as the module docstring
    says; returns False, changing nothing, when its layout is not the one this knows. ``dtype``
    exists for tests: with ``torch.float32`` the rewritten model computes the original function.

    >>> from spandrel.architectures.ESRGAN import ESRGAN
    >>> bf16_with_fp32_trunk(ESRGAN(num_blocks=1, scale=4).eval())
    True
    """
    seq = getattr(model, "model", None)
    if not isinstance(seq, nn.Sequential) or len(seq) < 3:
        return False
    kids = list(seq)
    trunk = kids[1]
    # [first conv, ShortcutBlock(RRDBs + conv), upsampling ..., (hr conv, act), last conv]
    if (type(trunk).__name__ != "ShortcutBlock" or not isinstance(kids[0], nn.Conv2d)
            or not any(_is_dense_block(m) for m in trunk.modules())):
        return False
    for parent in list(trunk.modules()):
        for name, child in list(parent.named_children()):
            if _is_dense_block(child):
                setattr(parent, name, DenseBlockFp32Sum(child, dtype))
    tail = [m.to(dtype) for m in kids[2:-1]]
    model.model = nn.Sequential(kids[0], trunk, Cast(dtype), *tail, Cast(torch.float32), kids[-1])
    return True


def bf16_with_fp32_base(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Rewrite an fp32 spandrel SRVGG compact ``model`` (in place) so its convolutions and pixel
    shuffle run in ``dtype`` while the residual it learns is added to the upsampled input in
    fp32; returns False, changing nothing, when its layout is not the one this knows.

    spandrel's forward loops over ``body``, shuffles, then adds the nearest-upsampled input:
    a cast at the head of ``body`` and one after the shuffle put the sum in fp32 unchanged.

    >>> from spandrel.architectures.Compact import Compact as SRVGGNetCompact
    >>> bf16_with_fp32_base(SRVGGNetCompact(num_conv=2, upscale=4).eval())
    True
    """
    body, shuffle = getattr(model, "body", None), getattr(model, "upsampler", None)
    if (type(model).__name__ != "SRVGGNetCompact" or not isinstance(body, nn.ModuleList)
            or not isinstance(shuffle, nn.PixelShuffle)):
        return False
    body.to(dtype).insert(0, Cast(dtype))
    model.upsampler = nn.Sequential(shuffle, Cast(torch.float32))
    return True


def bf16_with_fp32_residual(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> bool:
    """:func:`bf16_with_fp32_trunk` for ESRGAN, :func:`bf16_with_fp32_base` for SRVGG compact;
    False (``model`` unchanged) for any other layout."""
    return bf16_with_fp32_trunk(model, dtype) or bf16_with_fp32_base(model, dtype)
