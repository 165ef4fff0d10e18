"""Comparison helpers: figures rendered to PNG, linked crops, upscaler and model tables."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from pipeline_lib import compare  # noqa: E402
from pipeline_lib.errors import InvalidParameterError  # noqa: E402

from conftest import psnr  # noqa: E402


def test_side_by_side_renders_png_of_the_right_size(photo, tmp_path):
    small = photo.resize((64, 64))
    fig = compare.side_by_side([small, photo], ["small", "photo"], panel=3.0, dpi=100)
    path = tmp_path / "grid.png"
    fig.savefig(path)
    with Image.open(path) as img:
        assert img.size == (600, 332)  # 2 panels × 3 in × 100 dpi, + title rows
        arr = np.asarray(img.convert("L"), dtype=np.float64)
    assert arr.std() > 20  # real picture content, not a blank canvas
    assert compare.figure_to_image(fig).size == (600, 332)
    with pytest.raises(InvalidParameterError, match="2 images but 1 labels"):
        compare.side_by_side([small, photo], ["one"])
    with pytest.raises(InvalidParameterError, match="at least one image"):
        compare.side_by_side([], [])


def test_crop_box_picks_the_same_region_at_any_size(photo):
    half = photo.resize((256, 256), Image.Resampling.BOX)
    a = compare.crop_box(photo, (0.25, 0.25, 0.5, 0.5))
    b = compare.crop_box(half, (0.25, 0.25, 0.5, 0.5))
    assert a.size == (128, 128) and b.size == (64, 64)
    assert psnr(a.resize((64, 64), Image.Resampling.BOX), b) > 40
    with pytest.raises(InvalidParameterError, match="fractions"):
        compare.crop_box(photo, (10, 10, 100, 100))


def test_zoom_crops_keep_pixels_and_share_a_size(photo, tmp_path):
    checker = Image.fromarray(((np.indices((10, 10)).sum(0) % 2) * 255).astype(np.uint8))
    crops = compare.zoom_crops([checker, photo.resize((40, 40))], (0, 0, 0.5, 0.5), as_figure=False)
    assert [c.size for c in crops] == [(20, 20), (20, 20)]
    # nearest-neighbour: every source pixel becomes a clean 4×4 block, no grey in between
    assert set(np.unique(np.asarray(crops[0]))) == {0, 255}
    assert np.array_equal(np.asarray(crops[0])[::4, ::4], np.asarray(checker)[:5, :5])
    fig = compare.zoom_crops([photo, photo.resize((128, 128))], labels=["a", "b"], panel=2.0)
    fig.savefig(tmp_path / "zoom.png")
    with Image.open(tmp_path / "zoom.png") as img:
        assert img.size == (400, 232)
    assert "px crop" in fig.axes[1].get_title()


def test_compare_upscalers_table_and_images(photo):
    ref = compare.crop_box(photo, (0.375, 0.18, 0.5, 0.305))  # 64×64 face crop
    low = compare.shrink(ref, 4)
    assert low.size == (16, 16)
    images, table = compare.compare_upscalers(
        low, ["realesr-animevideov3", "fsrcnn-x4", "no-such-model"], reference=ref, progress=False)
    assert list(images) == ["bicubic", "realesr-animevideov3", "fsrcnn-x4"]
    assert all(im.size == ref.size for im in images.values())
    by = {r["model"]: r for r in table}
    assert by["bicubic"]["backend"] == "pillow" and by["fsrcnn-x4"]["backend"] == "opencv"
    for name, img in images.items():
        assert by[name]["psnr"] == pytest.approx(psnr(img, ref), abs=0.01)
        assert 15 < by[name]["psnr"] < 40 and by[name]["seconds"] >= 0
    bad = by["no-such-model"]
    assert bad["size"] is None and bad["psnr"] is None and "unknown" in bad["note"].lower()
    text = str(table)
    assert text.splitlines()[0].split()[:3] == ["model", "backend", "device"]
    assert "n/a" in text and "<table>" in table._repr_html_()
    with pytest.raises(InvalidParameterError, match="reference"):
        compare.compare_upscalers(low, ["fsrcnn-x4"], reference=ref, scale=2)


def test_compare_upscalers_without_reference_uses_scale(small_photo):
    images, table = compare.compare_upscalers(small_photo, ["espcn-x2"], scale=2, progress=False)
    assert {k: v.size for k, v in images.items()} == {"bicubic": (96, 80), "espcn-x2": (96, 80)}
    assert "psnr" not in table[0]


def test_available_upscalers_lists_offline_models_once():
    names = compare.available_upscalers(4)
    assert {"realesrgan-x4plus", "realesr-animevideov3", "fsrcnn-x4", "espcn-x4"} <= set(names)
    assert "realesr-animevideov3-x2" not in names  # same network as realesr-animevideov3
    assert "espcn-x2" not in names and "espcn-x2" in compare.available_upscalers(2)
    assert len(names) == len(set(names))


def test_compare_models_same_seed_on_tiny_presets():
    from pipeline_lib import notebook as nb

    presets = nb.test_presets()
    images, table = compare.compare_models("a red fox", [*presets, "no-such-preset"], seed=3,
                                           steps=2, width=64, height=64, progress=False)
    assert {k: v.size for k, v in images.items()} == {"tiny-sd": (64, 64), "tiny-sdxl": (64, 64)}
    rows = {r["model"]: r for r in table}
    for name in presets:
        assert rows[name]["seconds"] > 0 and rows[name]["size"] == (64, 64)
        assert rows[name]["peak_gpu_mb"] is None or rows[name]["peak_gpu_mb"] > 0
        assert rows[name]["peak_rss_mb"] is None or rows[name]["peak_rss_mb"] > 10
    assert "unknown model preset" in rows["no-such-preset"]["note"]
    again, _ = compare.compare_models("a red fox", ["tiny-sd"], seed=3, steps=2, width=64,
                                      height=64, progress=False)
    assert np.array_equal(np.asarray(again["tiny-sd"]), np.asarray(images["tiny-sd"]))
    with pytest.raises(InvalidParameterError, match="at least one preset"):
        compare.compare_models("x", [])


def test_table_formats_numbers():
    t = compare.Table([{"model": "a", "seconds": 0.01234, "size": (2, 3), "psnr": math.inf},
                       {"model": "b", "seconds": 12.5, "extra": None}])
    lines = str(t).splitlines()
    assert lines[0].split() == ["model", "seconds", "size", "psnr", "extra"]
    assert lines[2].split() == ["a", "0.0123", "2×3", "inf", "n/a"]
    assert lines[3].split() == ["b", "12.50", "n/a", "n/a", "n/a"]


def test_compare_refine_gan_alone_vs_gan_plus_refine(sd_dir, photo, tmp_path):
    ref = photo.crop((192, 96, 256, 160))  # 64² of the face
    low = compare.shrink(ref, 4)
    images, table = compare.compare_refine(low, "astronaut portrait", upscaler="realesr-animevideov3",
                                           model=sd_dir, strength=0.3, reference=ref, seed=1,
                                           label="Real-ESRGAN", steps=2, progress=False)
    assert list(images) == ["Real-ESRGAN ×4", "Real-ESRGAN ×4 + refine 0.3"]
    gan, refined = images.values()
    assert gan.size == refined.size == (64, 64)
    assert np.abs(np.asarray(gan, np.int16) - np.asarray(refined, np.int16)).max() > 5
    assert [r["model"] for r in table] == list(images)
    assert all(r["size"] == (64, 64) and math.isfinite(r["psnr"]) for r in table)
    assert table[1]["psnr"] == pytest.approx(psnr(refined, ref))
    # same seed → the same refined pixels; without a reference, the default ×4
    again, _ = compare.compare_refine(low, "astronaut portrait", upscaler="realesr-animevideov3",
                                      model=sd_dir, seed=1, steps=2, progress=False)
    assert list(again) == ["realesr-animevideov3 ×4", "realesr-animevideov3 ×4 + refine 0.3"]
    assert np.array_equal(np.asarray(again["realesr-animevideov3 ×4 + refine 0.3"]),
                          np.asarray(refined))
    # a refine that cannot run here: a row saying why; the GAN result is still there
    images, table = compare.compare_refine(low, "x", upscaler="realesr-animevideov3",
                                           model=str(tmp_path / "no-such-model"), progress=False)
    assert list(images) == ["realesr-animevideov3 ×4"] and "no-such-model" in table[1]["note"]
    with pytest.raises(InvalidParameterError, match="strength must be"):
        compare.compare_refine(low, "x", upscaler="realesr-animevideov3", strength=1.5)


def test_crop_box_of_whole_pixels_cuts_exactly_those(photo):
    from pipeline_lib.presentation import pixel_box

    img = photo.resize((333, 217))
    for x, y, side in ((0.5, 0.5, 100), (0.0, 1.0, 64), (0.37, 0.61, 217), (0.9, 0.1, 500)):
        box = pixel_box(img.size, x, y, side)
        cut = compare.crop_box(img, box)
        assert cut.size == (min(side, 333), min(side, 217))
        left, top = round(box[0] * 333), round(box[1] * 217)
        assert cut.tobytes() == img.crop((left, top, left + cut.width, top + cut.height)).tobytes()
    with pytest.raises(InvalidParameterError, match="crop side"):
        pixel_box(img.size, 0.5, 0.5, 0)
