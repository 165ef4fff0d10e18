"""The app's controller alone: no ipywidgets, plain values in, state out."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.widgets.controller import CUSTOM, Controller, GenerateForm, Result
from pipeline_lib.widgets.progress import JobProgress, Progress, format_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def events() -> list[str]:
    return []


@pytest.fixture()
def ctl(tmp_path, events) -> Controller:
    return Controller(test_mode=True, output_dir=tmp_path / "out", on_change=events.append)


def _form(ctl: Controller, **kw) -> GenerateForm:
    base = dict(prompt="a cat", model=ctl.models[0], aspect=CUSTOM, width=64, height=64, seed="5")
    return GenerateForm(**{**base, **kw})


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_controller_imports_without_ipywidgets():
    code = ("import sys; import pipeline_lib.widgets.controller, pipeline_lib.widgets.progress; "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_generate_reports_every_step_and_says_when_the_size_changed(ctl, events):
    seen: list[Progress] = []
    ctl.on_change = lambda what: (events.append(what), what == "progress" and seen.append(
        Progress(**vars(ctl.progress))))
    assert ctl.generate(_form(ctl, width=70), "128") is True
    (r,) = ctl.results
    assert r.original.size == (72, 64) and r.generated.seed == 5
    steps = r.generated.params["steps"]
    # one report per denoising step, with its total, then the finished job at 100 %
    assert [(p.done, p.total) for p in seen if p.done and not p.finished] == \
        [(i, steps) for i in range(1, steps + 1)]
    assert seen[-1].percent == 100 and seen[-1].finished and not ctl.progress.failed
    assert "72×64" in ctl.status and "seed 5" in ctl.status
    # the library's own warning reaches the user: width 70 became 72
    assert any("70x64" in n and "72x64" in n for n in ctl.notes), ctl.notes
    assert ctl.message is None and not ctl.busy
    assert "results" in events and events.count("busy") == 2


def test_error_inside_the_library_is_its_own_message_and_the_app_keeps_working(ctl):
    # width 5000 passes the form and is refused inside generate(): the library's message is shown
    assert ctl.generate(_form(ctl, width=5000)) is False
    assert ctl.message.kind == "error"
    assert ctl.message.text.startswith("InvalidParameterError: ") and "4096" in ctl.message.text
    assert ctl.message.details == "" and ctl.status == "failed" and ctl.progress.failed
    assert not ctl.busy and ctl.results == []
    assert ctl.generate(_form(ctl)) is True
    assert ctl.message is None and [r.original.size for r in ctl.results] == [(64, 64)]


def test_unexpected_error_is_one_line_and_a_folded_traceback(ctl, monkeypatch):
    assert ctl.generate(_form(ctl))

    def boom(*a, **k):
        raise RuntimeError("GPU fell off the bus")

    monkeypatch.setattr(sys.modules["pipeline_lib.upscale"], "upscale", boom)
    assert ctl.upscale("realesr-animevideov3", "128") is False
    assert ctl.message.text == "unexpected error while upscaling: RuntimeError: GPU fell off the bus"
    assert "Traceback" in ctl.message.details and "GPU fell off the bus" in ctl.message.details
    assert ctl.results[0].upscaled is None


def test_form_rules_come_from_the_library(ctl):
    with pytest.raises(pl.InvalidParameterError, match="prompt is empty"):
        ctl.generate_kwargs(_form(ctl, prompt="  "))
    with pytest.raises(pl.InvalidParameterError, match="seed must be"):
        ctl.generate_kwargs(_form(ctl, seed="lucky"))
    kw = ctl.generate_kwargs(_form(ctl, seed=" random ", steps=0, guidance=-1))
    assert kw["seed"] is None and "steps" not in kw and "guidance" not in kw
    kw = ctl.generate_kwargs(_form(ctl, aspect="model default", steps=3, guidance=4.5, seed="-1"))
    assert (kw["width"], kw["height"], kw["steps"], kw["guidance"], kw["seed"]) == (None, None, 3, 4.5, None)
    kw = ctl.generate_kwargs(_form(ctl, aspect="portrait"))
    assert kw["width"] < kw["height"]
    assert ctl.target("1536x2048") == (1536, 2048) and ctl.target(" 2048 ") == 2048
    with pytest.raises(pl.InvalidParameterError, match="target size is empty"):
        ctl.target("  ")
    # a bad target size is refused before any generation starts
    assert ctl.generate(_form(ctl), "big") is False and "size 'big'" in ctl.message.text
    assert ctl.results == []


def test_upload_reads_like_a_file_and_names_the_upload_in_errors(ctl, small_photo):
    assert ctl.upload("C:\\photos\\face.png", _png(small_photo))
    (r,) = ctl.results
    assert r.name == "face" and r.original.size == (48, 40)
    assert np.array_equal(np.asarray(r.original), np.asarray(small_photo))
    assert ctl.upload("notes.png", b"this is not a picture") is False
    assert ctl.message.text.startswith("ImageReadError: notes.png: ")
    assert "pipeline_lib-upload" not in ctl.message.text  # not the temporary file
    assert ctl.results == [r]  # the picture shown before stays


def test_upload_of_16_bit_colour_is_shown_and_upscaled_at_8_bits(ctl):
    cv2 = pytest.importorskip("cv2")
    arr = np.arange(8 * 6 * 3, dtype=np.uint16).reshape(6, 8, 3) * 300
    ok, data = cv2.imencode(".png", arr[..., ::-1])  # OpenCV writes BGR
    assert ok
    assert ctl.upload("deep.png", data.tobytes())
    shown = ctl.results[0].original
    assert shown.mode == "RGB" and np.array_equal(np.asarray(shown), (arr >> 8).astype(np.uint8))


def test_upscale_moves_one_bar_per_tile_with_time_left_and_saves(ctl, small_photo, tmp_path):
    clock = FakeClock()
    ctl.clock = clock
    seen: list[Progress] = []
    statuses: list[str] = []

    def on_change(what):
        if what == "progress":
            clock.now += 2.0
            seen.append(Progress(**vars(ctl.progress)))
        elif what == "status":
            statuses.append(ctl.status)

    assert ctl.upload("face.png", _png(small_photo))
    ctl.on_change = on_change
    assert ctl.upscale("realesr-animevideov3", "96")
    (r,) = ctl.results
    assert r.upscaled.size == (96, 80) and r.upscale_info.model == "realesr-animevideov3"
    running = [p for p in seen if p.done and not p.finished]  # the library's reports
    assert running and all(p.total >= 1 for p in running)  # every report has a total
    assert seen[-1].finished and seen[-1].percent == 100
    assert any("tile 1/" in s for s in statuses), statuses
    assert [p.fraction for p in seen] == sorted(p.fraction for p in seen)

    assert ctl.save(tmp_path / "pics")
    assert ctl.save(tmp_path / "pics")  # a second save never overwrites the first
    first, second = ctl.saved
    assert (first.name, second.name) == ("face-96x80.png", "face-96x80-1.png")
    with Image.open(first) as img:
        assert img.size == (96, 80) and img.text["upscaler"] == "realesr-animevideov3"
    assert ctl.message.kind == "info" and str(second) in ctl.message.text


def test_upscale_never_swaps_the_model_the_user_picked(ctl, small_photo):
    assert ctl.upload("face.png", _png(small_photo))
    # not cached and downloads are off: backend="auto" would quietly run another model
    assert ctl.upscale("4x-ultrasharp", "96") is False
    assert ctl.message.text.startswith("WeightsError: ") and "4x-UltraSharp.pth" in ctl.message.text
    assert ctl.results[0].upscaled is None


def test_nothing_to_upscale_or_save_yet(ctl):
    assert ctl.upscale("realesr-animevideov3", "128") is False
    assert "nothing to upscale" in ctl.message.text
    assert ctl.save() is False and "nothing to save" in ctl.message.text


def test_rows_show_pictures_and_same_size_crops_that_follow_the_zoom(ctl, small_photo):
    assert ctl.upload("face.png", _png(small_photo))
    assert ctl.upscale("realesr-animevideov3", "96")
    (row,) = ctl.rows()
    assert [p.size for p in row.pictures] == [(48, 40), (96, 80)]
    assert [Image.open(io.BytesIO(p.png)).size for p in row.pictures] == [(48, 40), (96, 80)]
    assert "original" in row.pictures[0].caption and "realesr-animevideov3" in row.pictures[1].caption
    crops = [Image.open(io.BytesIO(p.png)) for p in row.crops]
    assert len(crops) == 2 and crops[0].size == crops[1].size
    ctl.set_zoom(0.1, 0.9, 8)
    moved = [Image.open(io.BytesIO(p.png)) for p in ctl.rows()[0].crops]
    assert [m.tobytes() for m in moved] != [c.tobytes() for c in crops]
    assert "×8" in ctl.rows()[0].crops[0].caption
    with pytest.raises(pl.InvalidParameterError, match="zoom"):
        ctl.set_zoom(0.5, 0.5, 0)


# ---------------------------------------------------------------- LoRAs, hires fix, refine
@pytest.fixture(scope="session")
def lora_bytes() -> bytes:
    pytest.importorskip("peft")  # LoRAs load (and are made) through peft
    from pipeline_lib.testing import tiny_sd_lora_bytes

    return tiny_sd_lora_bytes(seed=1)


@pytest.fixture()
def lora_folder(tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    monkeypatch.setenv("PIPELINE_LIB_LORA_DIR", str(folder))
    return folder


def test_lora_picked_in_the_app_reaches_generate(lora_folder, lora_bytes, tmp_path, events):
    lora_folder.mkdir()
    (lora_folder / "detail.safetensors").write_bytes(lora_bytes)
    (lora_folder / "notes.txt").write_text("not a LoRA")
    ctl = Controller(test_mode=True, output_dir=tmp_path / "out", on_change=events.append)
    assert ctl.loras == ["detail.safetensors"]
    form = _form(ctl, loras=[("detail.safetensors", 1.0)])
    assert ctl.generate_kwargs(form)["loras"] == [(str(lora_folder / "detail.safetensors"), 1.0)]
    assert ctl.generate(form), ctl.message
    (with_lora,) = ctl.results
    assert set(with_lora.generated.params["lora_hashes"]) == {"detail"}
    assert 'Lora hashes: "detail: ' in with_lora.generated.parameters_text()
    assert ctl.generate(_form(ctl))
    (plain,) = ctl.results
    diff = np.abs(np.asarray(with_lora.original, np.int16) - np.asarray(plain.original, np.int16))
    assert diff.max() > 10 and "lora_hashes" not in plain.generated.params
    assert ctl.save(tmp_path / "pics")  # the LoRA is in the saved file's metadata
    (lora_folder / "detail.safetensors").unlink()
    ctl.refresh_loras()
    assert ctl.loras == [] and events[-1] == "loras"


def test_lora_upload_saves_into_the_folder_and_never_overwrites(lora_folder, lora_bytes, tmp_path,
                                                                 events):
    ctl = Controller(test_mode=True, output_dir=tmp_path / "out", on_change=events.append)
    assert ctl.loras == []  # the folder does not exist yet
    assert ctl.upload_lora("C:\\downloads\\detail.safetensors", lora_bytes), ctl.message
    saved = lora_folder / "detail.safetensors"
    assert saved.read_bytes() == lora_bytes and ctl.loras == ["detail.safetensors"]
    assert "loras" in events and ctl.message.kind == "info" and str(saved) in ctl.message.text
    assert ctl.upload_lora("detail.safetensors", lora_bytes)  # the same file again: fine
    assert "unchanged" in ctl.message.text
    other = lora_bytes[:-1] + bytes([lora_bytes[-1] ^ 1])
    assert ctl.upload_lora("detail.safetensors", other) is False
    assert ctl.message.text.startswith("OutputExistsError: ") and "other content" in ctl.message.text
    assert saved.read_bytes() == lora_bytes  # left as it was
    assert ctl.upload_lora("broken.safetensors", b"\x08" + bytes(20)) is False
    assert ctl.message.text.startswith("InvalidParameterError: broken.safetensors is not a readable")
    assert ctl.upload_lora("model.ckpt", lora_bytes) is False
    assert "not a .safetensors file" in ctl.message.text
    assert sorted(p.name for p in lora_folder.iterdir()) == ["detail.safetensors"]  # no leftovers
    assert ctl.loras == ["detail.safetensors"]


def test_hires_fix_doubles_the_size_and_bad_strength_shows_the_library_message(ctl):
    assert ctl.generate(_form(ctl, hires=True, hires_scale=2.0, hires_strength=0.5)), ctl.message
    (r,) = ctl.results
    assert r.original.size == (128, 128)
    p = r.generated.params
    assert (p["width"], p["height"], p["hires_scale"], p["hires_upscaler"]) == (64, 64, 2.0, "latent")
    assert ctl.generate(_form(ctl, hires=True, hires_strength=0.0)) is False
    assert ctl.message.text.startswith("InvalidParameterError: hires_strength must be a finite "
                                       "number > 0")
    kw = ctl.generate_kwargs(_form(ctl, hires_strength=0.0))  # hires off: its fields stay out
    assert not any(k.startswith("hires") for k in kw)


def test_refine_after_upscale_shows_gan_and_refined_with_pixel_crops(ctl, tmp_path):
    assert ctl.generate(_form(ctl))
    assert ctl.upscale("realesr-animevideov3", "128", _form(ctl, refine_strength=0.3)), ctl.message
    (r,) = ctl.results
    assert r.refined.image.size == r.upscaled.size == (128, 128)
    assert np.abs(np.asarray(r.refined.image, np.int16) - np.asarray(r.upscaled, np.int16)).max() > 5
    assert r.refined.seed == r.generated.seed and r.refined.params["refine_strength"] == 0.3
    assert "refined at 0.3" in ctl.status and ctl.progress.finished
    (row,) = ctl.rows()
    assert [p.size for p in row.pictures] == [(64, 64), (128, 128), (128, 128)]
    assert "refined at 0.3" in row.pictures[2].caption
    # the same pixels of the GAN upscale and of the refined picture, 1:1, then 2:1
    crops = [Image.open(io.BytesIO(p.png)) for p in row.crops]
    assert [c.size for c in crops] == [(128, 128)] * 2
    assert np.array_equal(np.asarray(crops[0]), np.asarray(r.upscaled))
    assert np.array_equal(np.asarray(crops[1]), np.asarray(r.refined.image))
    assert "crop 128×128 px at 1:1" in row.crops[1].caption
    ctl.set_crop_ratio(2)
    crops = [Image.open(io.BytesIO(p.png)) for p in ctl.rows()[0].crops]
    assert [c.size for c in crops] == [(256, 256)] * 2
    assert np.array_equal(np.asarray(crops[1]),
                          np.asarray(r.refined.image.resize((256, 256), Image.Resampling.NEAREST)))
    with pytest.raises(pl.InvalidParameterError, match="crop ratio"):
        ctl.set_crop_ratio(3)
    assert ctl.save(tmp_path / "pics")
    (path,) = ctl.saved
    assert path.name.endswith("-128x128-refined.png")
    meta = pl.read_metadata(path, extra=True)
    assert meta["refine_strength"] == 0.3 and meta["upscaler"] == "realesr-animevideov3"
    assert (meta["width"], meta["height"]) == (64, 64)  # generate(**meta) makes the original


def test_pixel_crops_cut_the_same_region_of_large_pictures(ctl):
    from pipeline_lib.generate import GeneratedImage

    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 900, 3), np.uint8))
    refined = Image.fromarray(255 - np.asarray(big))
    ctl.results = [Result(big.resize((225, 150)), "pic", upscaled=big,
                          upscale_info=type("Info", (), {"model": "m"})(),
                          refined=GeneratedImage(refined, 1, {"refine_strength": 0.25}))]
    ctl.set_zoom(0.9, 0.1, 4)
    for ratio, side in ((1, 384), (2, 192)):
        ctl.set_crop_ratio(ratio)
        gan, ref = (np.asarray(Image.open(io.BytesIO(p.png))) for p in ctl.rows()[0].crops)
        assert gan.shape == ref.shape == (384, 384, 3)
        # centred on (810, 60), moved inside: columns 900-side..900, rows 0..side
        want = np.asarray(big.crop((900 - side, 0, 900, side)).resize((384, 384),
                                                                      Image.Resampling.NEAREST))
        assert np.array_equal(gan, want) and np.array_equal(ref, 255 - want)


def test_bad_refine_strength_is_refused_before_upscaling(ctl, small_photo):
    assert ctl.generate(_form(ctl))
    assert ctl.upscale("realesr-animevideov3", "128", _form(ctl, refine_strength=1.5)) is False
    assert ctl.message.text.startswith("InvalidParameterError: refine_strength must be")
    assert ctl.results[0].upscaled is None
    # an upload has no prompt of its own: refining it takes the form's, and says when it is empty
    assert ctl.upload("face.png", _png(small_photo))
    assert ctl.upscale("realesr-animevideov3", "96", _form(ctl, prompt=" ", refine_strength=0.3)) is False
    assert "prompt is empty" in ctl.message.text and ctl.results[0].upscaled is None


# ---------------------------------------------------------------- the progress figure alone
def test_job_progress_spans_parts_and_estimates_time_left():
    clock = FakeClock()
    updates: list[Progress] = []
    job = JobProgress(2, lambda s: updates.append(Progress(**vars(s))), clock)
    clock.now += 10  # loading a model: not part of the rate
    job.report(0, 1, 4)
    assert updates[-1].fraction == pytest.approx(0.125) and updates[-1].seconds_left is None
    clock.now += 1
    job.report(0, 2, 4)  # 0.125 of the job per second → 0.75 left = 6 s
    assert updates[-1].seconds_left == pytest.approx(6.0)
    job.report(0, 5, 4)  # a total below done (a later pass not yet counted) is never > 100 %
    assert updates[-1].fraction == pytest.approx(0.5) and updates[-1].total == 5
    job.report(1, 3, 12)  # second part; a total that grew between passes
    assert updates[-1].fraction == pytest.approx(0.625)
    assert updates[-1].text().startswith("62 % · ") and updates[-1].text().endswith(" left")
    clock.now += 2
    done = job.finish()
    assert done.finished and done.percent == 100 and done.elapsed == pytest.approx(13)
    assert done.text() == "100 % · 13.0 s"
    failed = JobProgress(1, None, clock).finish(failed=True)
    assert failed.failed and failed.text() == "failed"


def test_format_seconds():
    assert [format_seconds(s) for s in (0.04, 7.5, 59.9, 75, 3725)] == \
        ["0.0 s", "7.5 s", "59.9 s", "1:15", "1:02:05"]


def test_two_gpus_split_the_apps_pictures_and_the_status_says_so(ctl, monkeypatch):
    import pipeline_lib.multi_gpu as multi_gpu

    gen_room = sys.modules["pipeline_lib.generate"]  # the package (pl.generate is the function)
    real, seen = gen_room.generate, []

    def spy(prompt, **kw):  # the CPU stands in for the two GPUs: record, then run on it
        seen.append(kw.pop("devices", None))
        return real(prompt, **kw)

    monkeypatch.setattr(gen_room, "generate", spy)
    monkeypatch.setattr(multi_gpu, "usable_gpus", lambda: ["cuda:0", "cuda:1"])
    assert ctl.generate(_form(ctl, num_images=2)), ctl.message
    assert seen == [["cuda:0", "cuda:1"]] and len(ctl.results) == 2
    assert "on cuda:0 + cuda:1" in ctl.status
    assert ctl.generate(_form(ctl, num_images=1)), ctl.message  # one picture: one GPU
    assert seen[-1] is None and " on cuda" not in ctl.status
