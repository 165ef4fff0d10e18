"""The notebook app driven as a user would: set values, click buttons, read what is shown."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ipywidgets")

import pipeline_lib as pl  # noqa: E402
from pipeline_lib.testing import simulate_upload, upload_value  # noqa: E402
from pipeline_lib.widgets.view import App, uploaded_files  # noqa: E402


@pytest.fixture()
def ui(tmp_path) -> App:
    a = pl.app(test_mode=True, output_dir=tmp_path / "out")
    a.aspect.value = "custom"
    a.width.value, a.height.value = 64, 64
    a.target_size.value = "128"
    return a


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_import_stays_light_and_exports_resolve():
    code = ("import sys, pipeline_lib as pl; "
            "assert 'matplotlib' not in sys.modules and 'ipywidgets' not in sys.modules; "
            "assert callable(pl.app) and callable(pl.side_by_side) and callable(pl.compare_models); "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_generate_upscale_save(ui, tmp_path):
    ui.seed.value = "7"
    ui.num_images.value = 2
    ui.generate_button.click()
    assert "⚠" not in ui.message.value, ui.message.value
    assert [r.generated.seed for r in ui.results] == [7, 8]
    assert [im.size for im in ui.shown_images()] == [(64, 64), (64, 64)]
    steps = ui.results[0].generated.params["steps"]
    p = ui.controller.progress  # moved per denoising step, to the end
    assert (p.done, p.total, p.finished) == (steps, steps, True)
    assert ui.progress.value == ui.progress.max == 100 and ui.progress_text.value.startswith("100 %")

    ui.upscale_button.click()
    assert "⚠" not in ui.message.value, ui.message.value
    # each row: original and upscaled side by side
    assert [im.size for im in ui.shown_images()] == [(64, 64), (128, 128)] * 2
    shown_up = np.asarray(ui.shown_images()[1].convert("RGB"))
    assert np.array_equal(shown_up, np.asarray(ui.results[0].upscaled.convert("RGB")))

    ui.save_button.click()
    assert "⚠" not in ui.message.value, ui.message.value
    first = list(ui.saved)
    assert len(first) == 2 and all(p.is_file() for p in first)
    for p, seed in zip(first, (7, 8)):
        assert Image.open(p).size == (128, 128)
        meta = pl.read_metadata(p, extra=True)
        assert meta["seed"] == seed and meta["model"] == "tiny-sd"
        assert meta["prompt"] == ui.prompt.value.strip()
        assert meta["upscaler"] == "realesr-animevideov3" and meta["upscale_size"] == "128x128"
        # generate(**read_metadata(p)) makes the un-upscaled picture again
        # (imported from the subpackage: once pipeline_lib.generate is imported, the package
        # attribute `pl.generate` is the submodule, not the function)
        from pipeline_lib.generate import generate

        again = generate(**pl.read_metadata(p), progress=False)[0].image
        orig = ui.results[seed - 7].original
        # the app made both in one batch, this one alone: batched matmuls may round the last
        # bit differently on some CPUs (seen: one value of 12288 one level off), never more
        diff = np.abs(np.asarray(again, np.int16) - np.asarray(orig, np.int16))
        assert again.size == orig.size and diff.max() <= 1 and (diff > 0).mean() < 0.01
    before = first[0].read_bytes()
    ui.save_button.click()  # a second save gets new names and leaves the first files alone
    second = ui.saved[2:]
    assert len(second) == 2 and set(second).isdisjoint(first) and all(p.is_file() for p in second)
    assert first[0].read_bytes() == before


def test_bad_input_shows_message_and_app_keeps_working(ui):
    ui.prompt.value = "   "
    ui.generate_button.click()
    assert "prompt is empty" in ui.message.value and ui.results == []
    assert not ui.generate_button.disabled

    ui.prompt.value = "a cat"
    ui.width.value = 5000
    ui.generate_button.click()
    assert "InvalidParameterError" in ui.message.value and "4096" in ui.message.value

    ui.upscale_button.click()
    assert "nothing to upscale" in ui.message.value

    simulate_upload(ui, b"this is not a picture", "notes.png")
    assert "not an image" in ui.message.value and "notes.png" in ui.message.value
    assert ui.results == []

    ui.width.value = 64
    ui.seed.value = "lucky"
    ui.generate_button.click()
    assert "seed must be" in ui.message.value

    ui.seed.value = "3"
    ui.target_size.value = "big"
    ui.generate_button.click()  # a bad target size is caught before generating
    assert "size 'big'" in ui.message.value and ui.results == []

    ui.target_size.value = "128"
    ui.generate_button.click()  # a valid click after all that works and clears the message
    assert ui.message.value == "" and [im.size for im in ui.shown_images()] == [(64, 64)]


def test_unexpected_error_is_one_line_with_folded_details(ui, monkeypatch):
    up = sys.modules["pipeline_lib.upscale"]  # the package attribute is the function

    ui.generate_button.click()

    def boom(*a, **k):
        raise RuntimeError("GPU fell off the bus")

    monkeypatch.setattr(up, "upscale", boom)
    ui.upscale_button.click()
    assert "unexpected error while upscaling: RuntimeError: GPU fell off the bus" in ui.message.value
    assert "Traceback" not in ui.message.value
    assert ui.details_box.layout.display == ""  # the traceback is there, folded
    assert "Traceback" in ui.details.value and "GPU fell off the bus" in ui.details.value
    monkeypatch.undo()
    ui.upscale_button.click()
    assert ui.message.value == "" and ui.details_box.layout.display == "none"
    assert ui.results[0].upscaled.size == (128, 128)


def test_upload_upscale_and_save(ui, small_photo):
    simulate_upload(ui, _png_bytes(small_photo), "face.png")
    assert "⚠" not in ui.message.value, ui.message.value
    assert [im.size for im in ui.shown_images()] == [(48, 40)]
    ui.target_size.value = "96"
    ui.upscale_button.click()
    assert [im.size for im in ui.shown_images()] == [(48, 40), (96, 80)]
    ui.save_button.click()
    (path,) = ui.saved
    assert path.name == "face-96x80.png"
    with Image.open(path) as img:
        assert img.size == (96, 80)
        assert img.text["upscaler"] == "realesr-animevideov3" and img.text["upscale_by"] == "2"


def test_zoom_crop_follows_sliders(ui, small_photo):
    simulate_upload(ui, _png_bytes(small_photo), "face.png")
    ui.upscale_button.click()
    (before,) = ui.shown_crops()
    assert len(before) == 2
    assert before[0].size == before[1].size  # the same region shown at the same size
    ui.zoom.value = 8
    (after,) = ui.shown_crops()
    assert after[0].size == after[1].size
    assert [a.tobytes() for a in after] != [b.tobytes() for b in before]


def test_app_is_reachable_from_the_package_and_the_widgets_package():
    import pipeline_lib.widgets as widgets
    from pipeline_lib.widgets import view

    assert pl.app is widgets.app is view.app
    assert widgets.__all__ == ["app"]


def test_upload_value_of_ipywidgets_7_and_8(small_photo):
    data = _png_bytes(small_photo)
    v7, v8 = upload_value(data, "face.png", 7), upload_value(data, "face.png", 8)
    assert isinstance(v7, dict) and v7["face.png"]["metadata"]["type"] == "image/png"
    assert isinstance(v8, tuple) and isinstance(v8[0]["content"], memoryview)
    assert uploaded_files(v8) == uploaded_files(v7) == [("face.png", data)]
    assert uploaded_files(()) == uploaded_files({}) == []
    with pytest.raises(ValueError, match="shape must be 7 or 8"):
        upload_value(data, "face.png", 9)


@pytest.mark.parametrize("shape", [None, 7, 8])
def test_simulated_upload_of_either_shape_reaches_the_app(ui, small_photo, shape):
    # None: the installed ipywidgets' own message; 7 / 8: the app's handler given that shape
    simulate_upload(ui, _png_bytes(small_photo), "C:\\photos\\face.png", shape=shape)
    assert "⚠" not in ui.message.value, ui.message.value
    assert [(r.name, r.original.size) for r in ui.results] == [("face", (48, 40))]
    assert "uploaded face.png (48×40)" in ui.status.value
    simulate_upload(ui, b"this is not a picture", "broken.png", shape=shape)
    assert "broken.png" in ui.message.value and "not an image" in ui.message.value


def test_controls_explain_themselves(ui):
    assert ui.upload.description == "Upload image"
    tip = getattr(ui.upload, "tooltip", None) or getattr(ui.upload, "description_tooltip", None)
    assert tip and "PNG" in tip
    assert ui.details_box.get_title(0) == "details"
    assert all(b.layout.min_width for b in ui.buttons)  # never squeezed to "Gener…"
    tip = getattr(ui.lora_upload, "tooltip", None) or getattr(ui.lora_upload, "description_tooltip", None)
    assert ui.lora_upload.description == "Upload LoRA" and tip and ".safetensors" in tip
    assert ui.lora_upload.accept == ".safetensors"
    assert all(s.layout.min_width for s in (ui.zoom_x, ui.zoom_y, ui.zoom))


def test_library_warning_and_progress_reach_the_view(ui):
    seen = []
    ui.progress.observe(lambda c: seen.append(c["new"]), names="value")
    ui.width.value = 70
    ui.generate_button.click()
    assert ui.message.value == "" and "72x64" in ui.notes.value and "70x64" in ui.notes.value
    assert seen[-1] == 100 and any(0 < v < 100 for v in seen)  # moved during the steps
    assert "72×64" in ui.status.value and ui.progress.bar_style == "success"
    assert not any(b.disabled for b in ui.buttons) and not ui.upload.disabled


def test_picked_upscaler_is_used_or_its_error_shown(ui, small_photo):
    simulate_upload(ui, _png_bytes(small_photo), "face.png")
    ui.upscaler.value = "4x-ultrasharp"  # not cached, downloads off
    ui.upscale_button.click()
    assert "WeightsError" in ui.message.value and "4x-UltraSharp.pth" in ui.message.value
    assert ui.results[0].upscaled is None and ui.progress.bar_style == "danger"


@pytest.fixture(scope="module")
def lora_bytes() -> bytes:
    pytest.importorskip("peft")  # LoRAs load (and are made) through peft
    from pipeline_lib.testing import tiny_sd_lora_bytes

    return tiny_sd_lora_bytes(seed=1)


@pytest.fixture()
def lora_ui(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_LORA_DIR", str(tmp_path / "loras"))
    ui = pl.app(test_mode=True, output_dir=tmp_path / "out")
    ui.aspect.value, ui.width.value, ui.height.value, ui.seed.value = "custom", 64, 64, "3"
    return ui


def test_lora_upload_fills_the_picker_and_never_overwrites(lora_ui, tmp_path):
    from safetensors.numpy import save

    ui, folder = lora_ui, tmp_path / "loras"
    first = save({"w": np.zeros((2, 2), np.float32)})  # any .safetensors: no model needed here
    assert ui.lora_rows == {} and "none in" in ui.lora_folder.value
    simulate_upload(ui.lora_upload, first, "grain.safetensors")
    assert "⚠" not in ui.message.value, ui.message.value
    assert (folder / "grain.safetensors").read_bytes() == first
    assert list(ui.lora_rows) == ["grain.safetensors"] and len(ui.lora_grid.children) == 1
    ui.lora_rows["grain.safetensors"][0].value = True
    # another file under the same name: refused, the first one kept, the ticked row kept
    simulate_upload(ui.lora_upload, save({"w": np.ones((2, 2), np.float32)}), "grain.safetensors")
    assert "OutputExistsError" in ui.message.value and "other content" in ui.message.value
    assert (folder / "grain.safetensors").read_bytes() == first
    assert ui.lora_rows["grain.safetensors"][0].value is True
    assert ui.form().loras == [("grain.safetensors", 1.0)]


def test_lora_ticked_in_the_picker_reaches_generate(lora_ui, tmp_path, lora_bytes):
    ui, folder = lora_ui, tmp_path / "loras"
    folder.mkdir()
    (folder / "detail.safetensors").write_bytes(lora_bytes)
    ui.controller.refresh_loras()  # a file put there by hand
    tick, weight = ui.lora_rows["detail.safetensors"]
    tick.value, weight.value = True, 0.8
    ui.generate_button.click()
    assert "⚠" not in ui.message.value, ui.message.value
    params = ui.results[0].generated.params
    assert params["loras"] == [(str(folder / "detail.safetensors"), 0.8)]
    assert set(params["lora_hashes"]) == {"detail"}


def test_hires_and_refine_controls(ui):
    assert ui.hires_scale.disabled and ui.hires_upscaler.options[0] == "latent"
    ui.hires.value = True
    assert not ui.hires_scale.disabled
    ui.hires_strength.value = 0.0
    ui.generate_button.click()
    assert "hires_strength must be a finite number &gt; 0" in ui.message.value
    ui.hires_strength.value = 0.5
    ui.generate_button.click()
    assert "⚠" not in ui.message.value, ui.message.value
    assert [im.size for im in ui.shown_images()] == [(128, 128)]

    ui.hires.value = False
    ui.generate_button.click()
    ui.refine_strength.value = 1.5
    ui.upscale_button.click()
    assert "refine_strength must be a finite number &gt; 0" in ui.message.value
    ui.refine_strength.value = 0.3
    ui.upscale_button.click()
    assert "⚠" not in ui.message.value, ui.message.value
    # original, GAN upscale, refined; then the same pixels of the last two at 1:1
    assert [im.size for im in ui.shown_images()] == [(64, 64), (128, 128), (128, 128)]
    (crops,) = ui.shown_crops()
    assert [c.size for c in crops] == [(128, 128)] * 2
    ui.crop_ratio.value = 2
    (crops,) = ui.shown_crops()
    assert [c.size for c in crops] == [(256, 256)] * 2
    refined = np.asarray(ui.results[0].refined.image.resize((256, 256), Image.Resampling.NEAREST))
    assert np.array_equal(np.asarray(crops[1].convert("RGB")), refined)


def test_notebook_check_passes_on_the_app_and_raises_naming_the_failure(ui, tmp_path):
    from pipeline_lib import notebook as nb

    path = nb.check_upload_upscale_save(ui, side=16, folder=tmp_path / "check")
    assert path == tmp_path / "check" / "astronaut-64x64.png" and Image.open(path).size == (64, 64)
    assert ui.output_dir.value == str(tmp_path / "out")  # the app's own folder is put back
    ui.upscaler.value = "4x-ultrasharp"  # not cached, downloads off: the upscale step fails
    with pytest.raises(AssertionError, match="upscale with 4x-ultrasharp: got None.*WeightsError"):
        nb.check_upload_upscale_save(ui, side=16, folder=tmp_path / "again")
