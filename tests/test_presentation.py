"""What front ends show and keep: 8-bit previews, zoom boxes, the upscale metadata of a picture."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.presentation import as_8bit, preview_png, save_result, upscaled_params, zoom_box


def test_as_8bit_keeps_the_top_byte_and_passes_8_bit_through():
    deep = np.array([[[0, 256, 65535], [255, 512, 40000]]], np.uint16)
    shown = as_8bit(deep)
    assert shown.mode == "RGB" and np.array_equal(np.asarray(shown), [[[0, 1, 255], [0, 2, 156]]])
    assert as_8bit(deep[..., :1]).mode == "L" and as_8bit(deep[..., :2]).mode == "LA"
    pil = Image.new("RGB", (3, 2), (1, 2, 3))
    assert as_8bit(pil) is pil
    with pytest.raises(pl.InvalidParameterError, match="uint8 or uint16"):
        as_8bit(np.zeros((2, 2, 3), np.float32))


def test_preview_png_shrinks_only_past_the_limit():
    big = Image.new("RGB", (1000, 500), (10, 20, 30))
    assert Image.open(io.BytesIO(preview_png(big, 768))).size == (768, 384)
    assert Image.open(io.BytesIO(preview_png(big))).size == (1000, 500)
    assert big.size == (1000, 500)  # the picture itself is left alone


def test_zoom_box_stays_inside_the_picture():
    assert zoom_box(0.5, 0.35, 4) == pytest.approx((0.375, 0.225, 0.625, 0.475))
    assert zoom_box(1.0, 0.0, 2) == pytest.approx((0.5, 0.0, 1.0, 0.5))
    for bad in (0, 0.5, True, "4"):
        with pytest.raises(pl.InvalidParameterError):
            zoom_box(0.5, 0.5, bad)


def _upscale_result(w=128, h=96, scale=2.0):
    return SimpleNamespace(model="realesr-animevideov3", scale=scale, size=(w, h),
                           as_metadata=lambda: {"upscaler": "realesr-animevideov3", "note": "x"})


def test_upscaled_params_adds_the_upscale_in_the_library_vocabulary():
    params = {"prompt": "a cat", "seed": 3}
    merged = upscaled_params(params, _upscale_result())
    assert merged == {"prompt": "a cat", "seed": 3, "upscaler": "realesr-animevideov3",
                      "upscale_by": 2.0, "upscale_size": "128x96"}
    assert params == {"prompt": "a cat", "seed": 3}


def test_save_result_writes_generation_and_upscale_metadata(tmp_path):
    img = Image.new("RGB", (128, 96), (200, 10, 10))
    gen = pl.GeneratedImage(img, 3, {"prompt": "a cat", "seed": 3, "steps": 2, "width": 64,
                                     "height": 48, "model": "tiny-sd", "guidance": 5.0})
    path = save_result(tmp_path / "a.png", img, generated=gen, upscaled=_upscale_result())
    meta = pl.read_metadata(path, extra=True)
    assert meta["prompt"] == "a cat" and meta["seed"] == 3 and meta["width"] == 64
    assert meta["upscaler"] == "realesr-animevideov3" and meta["upscale_size"] == "128x96"
    plain = save_result(tmp_path / "b.png", img, upscaled=_upscale_result())
    with Image.open(plain) as saved:
        assert saved.text == {"upscaler": "realesr-animevideov3", "note": "x"}
        assert np.array_equal(np.asarray(saved), np.asarray(img))
    with pytest.raises(pl.OutputExistsError):
        save_result(plain, img)
