"""upscale_files(): one outcome per file, and the CLI that prints them."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from pipeline_lib import InvalidParameterError, read_metadata, upscale_files
from pipeline_lib.cli import main as cli_main
from pipeline_lib.metadata import carried_over

FAST = "espcn-x2"  # bundled OpenCV model: no weights to fetch, milliseconds per image
OPTS = dict(model=FAST, backend="opencv", progress=False)


@pytest.fixture
def tree(tmp_path, small_photo):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    small_photo.save(src / "a.png")
    small_photo.crop((0, 0, 20, 10)).save(src / "sub" / "b.jpg")
    (src / "broken.png").write_text("not an image")
    return src


def test_outcomes_done_failed_then_skipped_then_overwritten(tree, tmp_path):
    out = tmp_path / "out"
    calls = []
    got = upscale_files([tree], out, **OPTS, on_progress=lambda d, t: calls.append((d, t)))
    by_name = {o.source.name: o for o in got}
    assert [o.source.name for o in got] == ["a.png", "broken.png", "b.jpg"]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    a, b, broken = by_name["a.png"], by_name["b.jpg"], by_name["broken.png"]
    assert (a.status, a.dest, a.size, a.model, a.backend) == ("done", out / "a_upscaled.png",
                                                               (96, 80), FAST, "opencv")
    assert b.status == "done" and b.dest == out / "sub" / "b_upscaled.png" and b.size == (40, 20)
    assert a.seconds > 0 and a.message == ""
    assert broken.status == "failed" and "broken.png" in broken.message and broken.model is None
    assert Image.open(a.dest).size == (96, 80)
    assert not (out / "broken_upscaled.png").exists()

    stamp = a.dest.stat().st_mtime_ns
    again = upscale_files(tree / "a.png", out, **OPTS)  # one path, not a list
    assert [(o.status, o.dest) for o in again] == [("skipped", a.dest)]
    assert "exists" in again[0].message and a.dest.stat().st_mtime_ns == stamp
    forced = upscale_files([tree / "a.png"], out, **OPTS, scale=3, overwrite=True)
    assert forced[0].status == "done" and Image.open(a.dest).size == (144, 120)


def test_a_file_name_for_several_inputs_is_refused_before_any_work(tree, tmp_path):
    dest = tmp_path / "file.png"
    with pytest.raises(InvalidParameterError, match=r"file\.png is a file name, but 3 input files"):
        upscale_files([tree], dest, **OPTS)
    assert not dest.exists()
    one = upscale_files([tree / "a.png"], dest, **OPTS)  # one input: the name is the output
    assert one[0].status == "done" and Image.open(dest).size == (96, 80)


def test_never_over_its_own_input_and_never_two_inputs_to_one_output(tmp_path):
    src = tmp_path / "x.png"
    Image.new("RGB", (8, 6), "red").save(src)
    before = src.read_bytes()
    got = upscale_files([src], tmp_path, **OPTS, suffix="", format="keep")
    assert got[0].status == "failed" and "over its own input" in got[0].message
    assert src.read_bytes() == before
    for sub, colour in (("a", "red"), ("b", "blue")):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (8, 6), colour).save(tmp_path / sub / "y.png")
    got = upscale_files([tmp_path / "a" / "y.png", tmp_path / "b" / "y.png"], tmp_path / "out",
                        **OPTS)
    assert [o.status for o in got] == ["done", "failed"]
    assert "is also the output of" in got[1].message and str(tmp_path / "a" / "y.png") in got[1].message
    assert np.asarray(Image.open(got[0].dest))[..., 0].mean() > 200  # a's (red), not b's


@pytest.mark.parametrize("kwargs, match", [
    ({"backend": "vulkan"}, "unknown backend 'vulkan'"),
    ({"format": "gif"}, "format must be one of png, jpg, webp, tif, keep"),
    ({"scale": 0}, "scale must be"),
    ({"tile": -1}, "tile must be"),
    ({"on_progress": 3}, "on_progress must be a function"),
])
def test_bad_arguments_raise_before_any_file(tree, tmp_path, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        upscale_files([tree], tmp_path / "out", **{**OPTS, **kwargs})
    assert not (tmp_path / "out").exists()


def test_nothing_to_do_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidParameterError, match="no input images found"):
        upscale_files([tmp_path / "empty"], tmp_path / "out", **OPTS)


def test_only_generation_parameters_are_carried(tmp_path, capsys):
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, "
                                "Size: 16x12, Model: x")
    info.add_text("Comment", "File written by Adobe Photoshop")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>")
    src = tmp_path / "in.png"
    Image.new("RGB", (16, 12), (10, 120, 200)).save(src, pnginfo=info)
    dest = tmp_path / "out.png"
    assert cli_main(["upscale", str(src), "-o", str(dest), "-m", FAST, "--backend", "opencv"]) == 0
    with Image.open(dest) as im:
        assert set(im.text) >= {"parameters", "upscaler", "upscale_backend"}
        assert "Comment" not in im.text and "XML:com.adobe.xmp" not in im.text
        assert im.text["upscaler"] == FAST
    assert read_metadata(dest)["seed"] == 5
    assert carried_over({"Comment": "x", "parameters": 3}) == {}


def test_cli_quiet_hides_bars_and_done_lines(tree, tmp_path, capsys):
    args = ["upscale", str(tree / "a.png"), str(tree / "sub" / "b.jpg"), "-m", FAST,
            "--backend", "opencv"]
    assert cli_main([*args, "-o", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert "images:" in loud.err and "a.png → " in loud.out
    assert f"2 upscaled, 0 skipped, 0 failed; ran {FAST} on opencv" in loud.out
    assert cli_main(["-q", *args, "-o", str(tmp_path / "quiet")]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == f"2 upscaled, 0 skipped, 0 failed; ran {FAST} on opencv\n"


def test_cli_refuses_a_file_name_for_two_inputs(tree, tmp_path, capsys):
    dest = tmp_path / "file.png"
    rc = cli_main(["upscale", str(tree / "a.png"), str(tree / "sub" / "b.jpg"), "-o", str(dest),
                   "-m", FAST])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "give a folder as the output" in err
    assert not dest.exists()


def test_a_named_model_that_cannot_load_fails_and_fallback_opts_in(tmp_path, monkeypatch, capsys):
    """Offline, empty cache: realesrgan-x2plus cannot load. Named, the file fails with the
    download instructions and the exit code says so; --fallback runs ESPCN and the summary says
    which model ran."""
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "a.png"
    Image.new("RGB", (10, 8), (90, 20, 160)).save(src)
    out = upscale_files([src], tmp_path / "o1", model="realesrgan-x2plus", progress=False)
    assert [o.status for o in out] == ["failed"] and "RealESRGAN_x2plus.pth" in out[0].message
    assert not (tmp_path / "o1").exists() or not list((tmp_path / "o1").iterdir())
    rc = cli_main(["-q", "upscale", str(src), "-o", str(tmp_path / "o2"), "-m", "realesrgan-x2plus",
                   "--fallback"])
    summary = capsys.readouterr().out
    assert rc == 0 and "espcn-x2 on opencv" in summary
    with Image.open(tmp_path / "o2" / "a_upscaled.png") as im:
        assert im.size == (20, 16) and im.text["upscaler"] == "espcn-x2"
        assert "instead of realesrgan-x2plus" in im.text["upscale_fallback"]
