"""A1111 interop of the metadata (first-hour issue, point 9) and the distribution name (point 2)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from PIL import Image

import pipeline_lib as pl
from pipeline_lib.metadata import format_parameters, parse_parameters
from pipeline_lib.samplers import scheduler_of

ROOT = Path(__file__).resolve().parents[1]

A1111_19 = ("a woman in the rain  \nNegative prompt: blurry \nSteps: 20, Sampler: DPM++ 2M, "
            "Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 512x768, Model hash: 0123456789, "
            "Model: epicrealism")


def test_a1111_19_sampler_and_schedule_type_read_back_as_one_key():
    p = parse_parameters(A1111_19)
    assert p["scheduler"] == "dpm++2m-karras" and p["model_hash"] == "0123456789"
    assert p["prompt"] == "a woman in the rain" and p["negative_prompt"] == "blurry"  # A1111 strips
    assert parse_parameters("x\nSteps: 2, Sampler: DPM++ 2M Karras, Seed: 1")["scheduler"] \
        == "dpm++2m-karras"  # before 1.9: one label
    assert parse_parameters("x\nSteps: 2, Sampler: Euler a, Schedule type: Automatic, Seed: 1"
                            )["scheduler"] == "euler-a"


def test_writes_a1111_names_never_default():
    text = format_parameters({"prompt": "x", "steps": 2, "scheduler": "dpm++2m-sde-karras",
                              "seed": 1, "model_hash": "abcdef0123", "model": "m"})
    assert "Sampler: DPM++ 2M SDE, Schedule type: Karras" in text and "Model hash: abcdef0123" in text
    assert "Sampler" not in format_parameters({"prompt": "x", "steps": 2, "scheduler": "default"})


def test_the_models_own_scheduler_is_named(sd_dir):
    g = pl.generate("x", model=sd_dir, seed=1, steps=2, width=32, height=32, device="cpu",
                    progress=False)[0]
    own = scheduler_of(pl.load_pipeline(sd_dir, device="cpu").scheduler)
    assert own is not None and g.params["scheduler"] == own and "Sampler: Default" not in \
        g.parameters_text()


def test_single_file_checkpoint_gets_a1111_model_hash_and_its_stem(tiny_root):
    from pipeline_lib.generate.pipeline import get_loaded
    from pipeline_lib.hashing import sha256_file
    from pipeline_lib.testing import tiny_sd_pipeline_dir, tiny_sd_single_file

    ckpt = tiny_sd_single_file(tiny_root)
    loaded = get_loaded(str(ckpt), device="cpu", config=str(tiny_sd_pipeline_dir(tiny_root)),
                        progress=False)
    assert loaded.model_hash == sha256_file(ckpt)[:10] and loaded.name == ckpt.stem
    assert str(ckpt.parent) not in loaded.name  # never the user's folders


@pytest.mark.parametrize("suffix, endian", [(".jpg", "utf-16-be"), (".webp", "utf-16-le")])
def test_parameters_in_exif_user_comment_are_read(tmp_path, suffix, endian):
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_19.encode(endian)
    path = tmp_path / f"a1111{suffix}"
    Image.new("RGB", (8, 8)).save(path, exif=exif)
    meta = pl.read_metadata(path)
    assert meta["scheduler"] == "dpm++2m-karras" and meta["seed"] == 5 and meta["width"] == 512


def test_distribution_name_is_ours_and_hints_install_from_a_checkout():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] not in ("pipeline_lib", "pipeline-lib")  # PyPI's is someone else's project
    texts = [p.read_text(encoding="utf-8") for p in [ROOT / "README.md",
                                                      *(ROOT / "pipeline_lib").rglob("*.py")]]
    assert not any(re.search(r"pip install[^\n`]*pipeline[_-]lib\[", t) for t in texts)
