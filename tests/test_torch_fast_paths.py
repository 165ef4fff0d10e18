"""The optimised torch paths (channels_last, batched tiles, torch.compile) give the plain model's
pixels. Tolerances: float outputs within 1e-4 (oneDNN picks other summation orders per memory
format / batch size; 1e-4 of full scale is < 0.03 of a uint8 level), uint8 images identical or
within one level."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_lib.errors import InvalidParameterError
from pipeline_lib.upscale import load_upscaler, upscale
from pipeline_lib.upscale.backends import torch_backend
from pipeline_lib.upscale.tiling import run_tiled

MODEL = "realesr-animevideov3"


@pytest.fixture(scope="module")
def up():
    return load_upscaler(MODEL, device="cpu", backend="torch", progress=False)


def _plain(up, batch: np.ndarray) -> np.ndarray:
    """The reference: the same module, NCHW-contiguous fp32 input, no other tricks."""
    with torch.inference_mode():
        y = up.info["module"](torch.from_numpy(np.ascontiguousarray(batch)))
    return y.clamp(0, 1).contiguous().numpy()


def test_run_matches_plain_model(up):
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)
    fast, plain = up.run(x), _plain(up, x)
    assert fast.shape == plain.shape == (1, 3, 80, 112)
    assert fast.dtype == np.float32
    assert np.abs(fast - plain).max() < 1e-4


def test_batched_tiles_match_one_by_one(up):
    img = np.random.default_rng(1).random((3, 40, 56), dtype=np.float32)
    one = run_tiled(up.run, img, up.scale, tile=24, overlap=8, batch=1)
    many = run_tiled(up.run, img, up.scale, tile=24, overlap=8, batch=4)
    assert one.shape == many.shape == (3, 160, 224)
    assert np.abs(one - many).max() < 1e-4


def test_cpu_defaults_no_batching_no_compile(up):
    assert up.batch == 1
    assert up.info["compiled"] is False
    assert up.default_tile == 384  # SRVGG compact on CPU (RRDBNet gets 256)


def test_compile_option_is_checked():
    with pytest.raises(InvalidParameterError, match="compile must be True or False"):
        torch_backend.load("x.pth", device="cpu", compile="yes")
    with pytest.raises(InvalidParameterError, match="takes no options.*compile=True/False"):
        torch_backend.load("x.pth", device="cpu", fast=True)


def test_compiled_model_gives_the_same_image(small_photo):
    pytest.importorskip("torch._inductor")
    arr = np.asarray(small_photo)[:16, :16]
    plain = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False)
    try:
        fast = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False,
                       compile=True)
    except Exception as exc:  # no C++ compiler for inductor here: nothing to compare
        if "compiler" in str(exc).lower() or "cpp" in str(exc).lower():
            pytest.skip(f"torch.compile cannot build CPU kernels here: {exc}")
        raise
    assert fast.shape == plain.shape == (64, 64, 3)
    assert np.abs(fast.astype(int) - plain.astype(int)).max() <= 1
