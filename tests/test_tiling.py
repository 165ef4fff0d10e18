"""The tiler: tiled = untiled within stated tolerance, no seams, OOM back-off."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import psnr
from pipeline_lib import load_upscaler, upscale
from pipeline_lib.upscale.tiling import run_tiled, tile_layout

FAST = "realesr-animevideov3"


@pytest.fixture(scope="module")
def crop(photo):
    return photo.crop((150, 60, 246, 156))  # 96×96 face region of the real photograph


def test_tiled_matches_untiled_on_a_photo(crop):
    ref = np.asarray(upscale(crop, FAST, tile=0, progress=False), dtype=np.float64)
    out = np.asarray(upscale(crop, FAST, tile=48, overlap=16, progress=False), dtype=np.float64)
    value = psnr(ref, out)
    print(f"animevideov3 tile=48 overlap=16: {value:.1f} dB")
    assert value >= 50
    # seams: the error on the rows/cols where tiles meet is no worse than 3x the mean error
    size, starts = tile_layout(96, 48, 16)
    diff = np.abs(ref - out).mean(axis=2)
    border_rows = [4 * (s + (size - (starts[1] - starts[0])) // 2) for s in starts[1:]]
    seam = max(diff[r - 2:r + 2].mean() for r in border_rows)
    assert diff.max() <= 12, f"max difference {diff.max()}"
    assert seam <= 3 * diff.mean() + 0.5


def test_rrdbnet_tiled_on_a_photo(crop):
    img = crop.crop((0, 0, 64, 48))
    ref = upscale(img, "realesrgan-x4plus", tile=0, progress=False)
    out = upscale(img, "realesrgan-x4plus", tile=40, overlap=16, progress=False)
    value = psnr(ref, out)
    print(f"x4plus tile=40 overlap=16: {value:.1f} dB")
    assert value >= 38  # small overlap on a tiny image; defaults (overlap 32+) reach more


def test_oom_backoff_halves_tiles_and_matches(crop, caplog):
    up = load_upscaler(FAST, device="cpu")
    module = up.native
    real_forward = module.forward
    calls = []

    def forward(x):
        calls.append(x.shape[-1])
        if x.shape[-1] > 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_forward(x)

    module.forward = forward
    try:
        with caplog.at_level(logging.WARNING):
            res = upscale(crop, FAST, tile=0, progress=False, full_result=True)
    finally:
        module.forward = real_forward
    assert "out of memory" in caplog.text
    assert res.tile == 24 and max(calls) == 96 and calls[-1] <= 40
    ref = upscale(crop, FAST, tile=0, progress=False)
    assert psnr(res.image, ref) >= 45


def test_run_tiled_with_identity_like_fn_is_exact():
    rng = np.random.default_rng(0)
    img = rng.random((3, 37, 53), dtype=np.float32)

    def nearest2(batch):
        return batch.repeat(2, axis=2).repeat(2, axis=3)

    out = run_tiled(nearest2, img, 2, tile=16, overlap=4, batch=3)
    np.testing.assert_allclose(out, nearest2(img[None])[0], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 3000), tile=st.integers(16, 700), overlap=st.integers(0, 200))
def test_layout_covers_with_overlap(length, tile, overlap):
    overlap = min(overlap, tile // 2 - 1)
    size, starts = tile_layout(length, tile, overlap)
    assert size <= max(tile, 1) or len(starts) == 1
    assert starts[0] == 0 and starts[-1] + size == length
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap  # neighbours share at least `overlap` pixels


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 70), w=st.integers(1, 70), tile=st.integers(16, 48),
       overlap=st.integers(0, 7), scale=st.sampled_from([1, 2, 3]))
def test_tiled_equals_untiled_for_pointwise_fn(h, w, tile, overlap, scale):
    rng = np.random.default_rng(h * 1000 + w)
    img = rng.random((3, h, w), dtype=np.float32)

    def fn(batch):
        return np.sqrt(batch).repeat(scale, axis=2).repeat(scale, axis=3)

    out = run_tiled(fn, img, scale, tile, overlap)
    assert out.shape == (3, h * scale, w * scale)
    np.testing.assert_allclose(out, fn(img[None])[0], atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(w=st.integers(1, 40), h=st.integers(1, 40), scale=st.floats(0.3, 6.0))
def test_output_size_is_always_exact(w, h, scale):
    arr = np.full((h, w, 3), 90, np.uint8)
    out = upscale(arr, FAST, scale=scale, progress=False)
    assert out.shape == (max(1, round(h * scale)), max(1, round(w * scale)), 3)


# --- spandrel's per-architecture tiling advice (ModelDescriptor.tiling)

def _load_marked(monkeypatch, tiling):
    """The fast model, loaded as if spandrel marked its architecture with ``tiling``."""
    from pipeline_lib.upscale.backends import torch_backend
    from pipeline_lib.upscale.registry import MODELS

    real = torch_backend.read_model

    def marked(target, progress=True):
        desc, path, name = real(target, progress)
        desc.tiling = tiling
        return desc, path, name

    monkeypatch.setattr(torch_backend, "read_model", marked)
    return torch_backend.load(MODELS[FAST], device="cpu", progress=False)


def _fail_over(up, side: int):
    """Make the model run out of memory on inputs wider than ``side``."""
    module = up.native
    real = module.forward

    def forward(x):
        if x.shape[-1] > side:
            raise RuntimeError("DefaultCPUAllocator: not enough memory (simulated)")
        return real(x)

    module.forward = forward


def test_model_marked_internal_runs_whole_or_is_refused(monkeypatch, crop):
    from spandrel import ModelTiling

    from pipeline_lib.errors import WholeImageOutOfMemoryError
    from pipeline_lib.upscale.tiling import (run_with_backoff,
                                             tile_for_model)

    up = _load_marked(monkeypatch, ModelTiling.INTERNAL)
    assert up.tiling == "internal" and up.default_tile == 0
    chw = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)[:, :40, :48] / 255
    tile = tile_for_model(up.tiling, 24, up.default_tile)  # a tile asked for: ignored
    assert tile == 0
    out, used = run_with_backoff(up.run, chw, up.scale, tile, 8)
    assert used == 0
    np.testing.assert_array_equal(out, up.run(chw[None])[0])
    _fail_over(up, 32)
    with pytest.raises(WholeImageOutOfMemoryError, match="must see the whole image.*40×48"):
        run_with_backoff(up.run, chw, up.scale, tile, 8)


def test_model_marked_discouraged_runs_whole_unless_a_tile_is_asked(monkeypatch, crop):
    from spandrel import ModelTiling

    from pipeline_lib.upscale.tiling import run_with_backoff, tile_for_model

    up = _load_marked(monkeypatch, ModelTiling.DISCOURAGED)
    assert up.tiling == "discouraged" and up.default_tile == 0
    assert tile_for_model(up.tiling, None, up.default_tile) == 0
    assert tile_for_model(up.tiling, 24, up.default_tile) == 24
    chw = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)[:, :40, :48] / 255
    _fail_over(up, 32)  # out of memory whole: it may still be tiled, so the tiler backs off
    out, used = run_with_backoff(up.run, chw, up.scale, 0, 8)
    assert used == 24 and out.shape == (3, 160, 192)


# --- the seam bound: tiles of 128 px reach ≥ 50 dB against untiled on a hard texture

TEXTURE = Path(__file__).resolve().parent / "data" / "texture-mix-192.png"


@pytest.mark.parametrize("model, arch", [("realesrgan-x4plus", "ESRGAN"),
                                         ("realesr-animevideov3", "Compact")])
def test_default_overlap_keeps_128px_tiles_seam_free_on_a_texture(model, arch):
    """gravel, grass and brick (CC0, scikit-image) as the three channels: fine detail everywhere,
    harder than a photo (bench/seams.py). The overlap is the model's default (Upscaler.overlap)."""
    from pipeline_lib.upscale.tiling import default_overlap, effective_overlap

    tex = np.asarray(Image.open(TEXTURE).convert("RGB"))
    assert tex.shape == (192, 192, 3)
    up = load_upscaler(model, device="cpu", backend="torch", dtype="fp32", progress=False)
    assert up.overlap == default_overlap(arch)
    kw = dict(backend="torch", device="cpu", dtype="fp32", progress=False)
    ref = upscale(tex, model, tile=0, **kw)
    overlap = effective_overlap(128, up.overlap)  # as the tiler caps the default
    out = upscale(tex, model, tile=128, overlap=overlap, **kw)
    value = psnr(ref, out)
    print(f"{model} tile=128 overlap={overlap}: {value:.1f} dB")
    assert value >= 50.0
