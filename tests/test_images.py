"""Reading and atomic, non-overwriting saving; 16-bit and metadata survive."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from pipeline_lib import ImageReadError, ImageTooLargeError, InvalidParameterError, OutputExistsError
from pipeline_lib.images import read_image, save_image


def test_save_creates_folders_and_refuses_overwrite(tmp_path, small_photo):
    dest = tmp_path / "a" / "b" / "x.png"
    save_image(small_photo, dest, metadata={"parameters": "a photo"})
    assert Image.open(dest).text["parameters"] == "a photo"
    before = dest.read_bytes()
    with pytest.raises(OutputExistsError, match="already exists"):
        save_image(Image.new("RGB", (4, 4)), dest)
    assert dest.read_bytes() == before
    save_image(Image.new("RGB", (4, 4)), dest, overwrite=True)
    assert Image.open(dest).size == (4, 4)
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".part")]


def test_failed_encode_leaves_no_file(tmp_path):
    dest = tmp_path / "x.jpg"
    with pytest.raises(InvalidParameterError, match="alpha"):
        save_image(Image.new("RGBA", (4, 4)), dest)
    assert list(tmp_path.iterdir()) == []


def test_16bit_rgb_png_round_trip_with_metadata(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65535, (9, 7, 3), dtype=np.uint16)
    dest = save_image(arr, tmp_path / "deep.png", metadata={"parameters": "deep"})
    back, meta = read_image(dest)
    assert back.dtype == np.uint16 and np.array_equal(back, arr)
    assert Image.open(dest).text["parameters"] == "deep"


def test_16bit_gray_round_trip(tmp_path):
    arr = np.arange(0, 65535, 1000, dtype=np.uint16).reshape(1, -1).repeat(3, 0)
    dest = save_image(arr, tmp_path / "g.png")
    back, meta = read_image(dest)
    assert back.dtype == np.uint16 and np.array_equal(back[..., 0], arr)


def test_unknown_suffix(tmp_path):
    with pytest.raises(InvalidParameterError, match="unknown image suffix"):
        save_image(Image.new("RGB", (2, 2)), tmp_path / "x.xyz")


def test_truncated_png_is_reported(tmp_path, small_photo):
    good = tmp_path / "good.png"
    small_photo.save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(bad)


def test_pixel_limit_checked_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(big)
    monkeypatch.setenv("PIPELINE_LIB_MAX_INPUT_PIXELS", "50000")
    with pytest.raises(ImageTooLargeError, match="90,000 pixels exceeds the limit of 50,000"):
        read_image(big)


def test_animated_image_is_refused_as_still(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ImageReadError, match="animated"):
        read_image(path)


def test_source_is_untouched(tmp_path, small_photo):
    src = tmp_path / "src.png"
    small_photo.save(src)
    before = (src.read_bytes(), os.stat(src).st_mtime_ns)
    read_image(src)
    assert (src.read_bytes(), os.stat(src).st_mtime_ns) == before
