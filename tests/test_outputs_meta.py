"""Outputs keep only what belongs to them, with ordinary file modes (first-hour issue, point 10)."""
from __future__ import annotations

import stat

from PIL import Image, PngImagePlugin

import pipeline_lib as pl
from pipeline_lib.metadata import carried_over
from pipeline_lib.outputs import atomic_write, free_name, save_to_free_name


def test_only_generation_parameters_travel_with_an_upscale(tmp_path):
    src = tmp_path / "in.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "File written by Adobe Photoshop")
    info.add_text("parameters", "a cat\nSteps: 20, Seed: 5")
    Image.new("RGB", (12, 10), (40, 90, 200)).save(src, pnginfo=info)
    res = pl.upscale(src, "realesr-animevideov3", scale=2, progress=False, full_result=True)
    meta = res.as_metadata()
    assert meta["parameters"] == "a cat\nSteps: 20, Seed: 5" and "Comment" not in meta
    assert meta["upscaler"] == "realesr-animevideov3" and meta["upscale_by"] == "2"
    out = pl.save_image(res.image, tmp_path / "out.png", metadata=meta)
    with Image.open(out) as im:
        assert "Comment" not in im.text and im.text["parameters"].startswith("a cat")


def test_carried_over_keeps_only_generation_parameters():
    assert carried_over({"upscaler": "x", "dpi": (72, 72), "Software": "GIMP", "parameters": "p"}) \
        == {"parameters": "p"}
    assert carried_over({}) == {} and carried_over(None) == {}


def test_written_files_are_world_readable(tmp_path):
    path = atomic_write(tmp_path / "a.bin", b"data")
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH  # not mkstemp's 0600


def test_converted_weights_in_the_cache_are_world_readable(tmp_path, monkeypatch):
    from pipeline_lib.upscale.registry import MODELS
    from pipeline_lib.upscale.weights import converted_from_ncnn

    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    dest = converted_from_ncnn(MODELS["realesr-animevideov3"])
    assert dest.is_file() and stat.S_IMODE(dest.stat().st_mode) & stat.S_IROTH


def test_free_names_never_replace_a_file(tmp_path):
    (tmp_path / "7.png").write_bytes(b"x")
    assert free_name(tmp_path, "7") == tmp_path / "7-1.png"
    made = save_to_free_name(tmp_path, "7", lambda d: atomic_write(d, b"y"))
    assert made == tmp_path / "7-1.png" and (tmp_path / "7.png").read_bytes() == b"x"


def test_a_mistyped_setting_is_reported_with_the_real_name(monkeypatch, caplog):
    import logging

    from pipeline_lib import config
    from pipeline_lib.errors import InvalidParameterError

    caplog.set_level(logging.WARNING, "pipeline_lib")
    assert config.check_environment({"PIPELINE_LIB_OFLINE": "1", "PIPELINE_LIB_CACHE": "/x"}) \
        == ["PIPELINE_LIB_OFLINE"]
    assert "did you mean PIPELINE_LIB_OFFLINE" in caplog.text
    monkeypatch.setenv("PIPELINE_LIB_MAX_INPUT_PIXELS", "lots")
    import pytest

    with pytest.raises(InvalidParameterError, match="PIPELINE_LIB_MAX_INPUT_PIXELS='lots'"):
        config.get("PIPELINE_LIB_MAX_INPUT_PIXELS")
