"""upscale(): kinds in = kinds out, modes, 16-bit, alpha, sizes, scale/size, cache, errors."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import psnr
from pipeline_lib import (ImageReadError, InvalidParameterError, UnknownModelError, unload_upscalers,
                          list_upscalers, load_upscaler, upscale)

FAST = "realesr-animevideov3"


def test_pil_in_pil_out_with_info(small_photo):
    out = upscale(small_photo, FAST, progress=False)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == (small_photo.width * 4, small_photo.height * 4)
    assert out.info["upscaler"] == FAST and out.info["upscale_backend"] == "torch"
    # the model output looks like the input: compare with a bicubic enlargement
    bicubic = small_photo.resize(out.size, Image.BICUBIC)
    assert psnr(out, bicubic) > 22


def test_numpy_uint8_keeps_dtype_and_channels(small_photo):
    arr = np.asarray(small_photo)
    out = upscale(arr, FAST, scale=2, progress=False)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    assert out.shape == (arr.shape[0] * 2, arr.shape[1] * 2, 3)


def test_16bit_rgb_stays_16bit_without_truncation(small_photo):
    arr8 = np.asarray(small_photo)
    arr16 = arr8.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, arr8.shape, dtype=np.uint16)
    out16 = upscale(arr16, FAST, progress=False)
    out8 = upscale(arr8, FAST, progress=False)
    assert out16.dtype == np.uint16 and out16.shape == out8.shape
    assert np.count_nonzero(out16 % 257) > out16.size // 2, "16-bit output must use the low byte"
    assert psnr(out16 / 257.0, out8.astype(float)) > 35


def test_rgba_alpha_is_upscaled_and_kept(small_photo):
    rgb = np.asarray(small_photo)
    h, w = rgb.shape[:2]
    alpha = np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).round().astype(np.uint8)
    rgba = np.dstack([rgb, alpha])
    out = upscale(Image.fromarray(rgba, "RGBA"), FAST, progress=False)
    assert out.mode == "RGBA" and out.size == (w * 4, h * 4)
    a = np.asarray(out)[..., 3].astype(float)
    ref = cv2.resize(alpha, out.size, interpolation=cv2.INTER_LINEAR).astype(float)
    assert psnr(a, ref) > 30
    rgb_only = upscale(small_photo, FAST, progress=False)
    assert psnr(np.asarray(out)[..., :3], rgb_only) > 50, "alpha must not disturb the colour"


def test_opaque_alpha_is_constant(small_photo):
    out = upscale(small_photo.convert("RGBA"), FAST, progress=False)
    assert out.mode == "RGBA" and np.asarray(out)[..., 3].min() == 255


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "CMYK"])
def test_other_pil_modes(small_photo, mode):
    src = small_photo.convert(mode)
    out = upscale(src, FAST, scale=2, progress=False)
    expected = {"L": "L", "LA": "LA", "P": "RGB", "1": "L", "CMYK": "RGB"}[mode]
    assert out.mode == expected and out.size == (src.width * 2, src.height * 2)


def test_gray_numpy_2d_stays_2d(small_photo):
    gray = np.asarray(small_photo.convert("L"))
    out = upscale(gray, FAST, progress=False)
    assert out.shape == (gray.shape[0] * 4, gray.shape[1] * 4)
    ref = cv2.resize(gray, out.shape[::-1], interpolation=cv2.INTER_CUBIC)
    assert psnr(out, ref) > 22


def test_16bit_gray_pil_stays_16bit(small_photo):
    gray16 = (np.asarray(small_photo.convert("L")).astype(np.uint16) * 257)
    out = upscale(Image.fromarray(gray16), FAST, scale=2, progress=False)
    assert out.mode == "I;16" and np.asarray(out).max() > 255


@pytest.mark.parametrize("shape", [(1, 1), (3, 517), (517, 3), (1, 9)])
def test_odd_sizes(shape):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    out = upscale(arr, FAST, progress=False)
    assert out.shape == (shape[0] * 4, shape[1] * 4, 3)


def test_odd_size_through_rrdbnet_minimum_size():
    arr = np.full((1, 1, 3), 128, np.uint8)  # RRDBNet needs ≥ 2 px: padded then cropped
    out = upscale(arr, "realesrgan-x4plus", progress=False)
    assert out.shape == (4, 4, 3) and abs(int(out.mean()) - 128) < 40


@pytest.mark.parametrize("scale, expected", [(2, (96, 80)), (3, (144, 120)), (3.2, (154, 128)),
                                             (1.5, (72, 60)), (8, (384, 320))])
def test_any_scale_gives_exact_size(small_photo, scale, expected):
    res = upscale(small_photo, FAST, scale=scale, progress=False, full_result=True)
    assert res.image.size == expected and res.size == expected


def test_size_long_side_and_exact(small_photo, caplog):
    assert upscale(small_photo, FAST, size=100, progress=False).size == (100, 83)
    portrait = small_photo.crop((0, 0, 32, 48))
    assert upscale(portrait, FAST, size=2048 // 16, progress=False).size == (85, 128)
    with caplog.at_level(logging.WARNING):
        assert upscale(small_photo, FAST, size=(64, 64), progress=False).size == (64, 64)
    assert "aspect ratio" in caplog.text
    assert upscale(small_photo, FAST, size="120x100", progress=False).size == (120, 100)


def test_animevideov3_x2_default_scale(small_photo):
    out = upscale(small_photo, "realesr-animevideov3-x2", progress=False)
    assert out.size == (small_photo.width * 2, small_photo.height * 2)


def test_path_input_applies_exif_orientation(tmp_path, small_photo):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    small_photo.save(path, exif=exif, quality=95)
    out = upscale(path, FAST, scale=2, progress=False)
    assert out.size == (small_photo.height * 2, small_photo.width * 2)


def test_cache_reuse_and_clear():
    a = load_upscaler(FAST, device="cpu")
    assert load_upscaler(FAST, device="cpu") is a
    unload_upscalers()
    b = load_upscaler(FAST, device="cpu")
    assert b is not a and b.scale == 4


def test_registry_lists_required_models():
    names = {r["name"]: r for r in list_upscalers()}
    for required in ["realesrgan-x4plus", "realesrgan-x2plus", "realesrnet-x4plus",
                     "realesrgan-x4plus-anime", "realesr-general-x4v3", "realesr-animevideov3",
                     "realesr-animevideov3-x2", "realesr-animevideov3-x3", "4x-ultrasharp"]:
        row = names[required]
        assert row["license"] and row["source"] and row["scale"] in (2, 4)
    assert names["realesrgan-x2plus"]["scale"] == 2
    assert "CC-BY-NC" in names["4x-ultrasharp"]["license"]


def test_unknown_model_suggests_names(small_photo):
    with pytest.raises(UnknownModelError, match="realesrgan-x4plus"):
        upscale(small_photo, "realesrgan-x4pls", progress=False)
    with pytest.raises(UnknownModelError, match="does not exist"):
        upscale(small_photo, "missing/model.pth", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": -1}, "scale must be"), ({"scale": float("nan")}, "scale must be"),
    ({"scale": 0}, "scale must be"), ({"size": 0}, "≥ 1"), ({"size": "abc"}, "'N' or 'WxH'"),
    ({"scale": 2, "size": 100}, "not both"), ({"tile": 8}, "at least 16"),
    ({"tile": 64, "overlap": 32}, "less than half"), ({"tile": -1}, "≥ 0"),
    ({"backend": "nope"}, "unknown backend"), ({"device": "cuda:7"}, "cuda"),
    ({"dtype": "fp8"}, "unknown dtype"),
])
def test_bad_parameters_are_explained(small_photo, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        upscale(small_photo, FAST, progress=False, **kwargs)


def test_unreadable_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        upscale(empty, FAST)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="not an image"):
        upscale(text, FAST)
    with pytest.raises(ImageReadError, match="no such file"):
        upscale(tmp_path / "missing.png", FAST)
    with pytest.raises(InvalidParameterError, match="uint8 or uint16"):
        upscale(np.zeros((4, 4, 3), np.float64), FAST)


def test_progress_bar_reaches_total(small_photo, monkeypatch):
    import tqdm.auto

    seen = []
    real = tqdm.auto.tqdm

    class Spy(real):
        def close(self):
            seen.append((self.n, self.total))
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Spy)
    upscale(small_photo, FAST, tile=16, overlap=4, progress=True)
    assert seen and seen[-1][0] == seen[-1][1] > 1
