"""Preset table, sizes, memory profiles and the CLI — none of it downloads anything."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import pipeline_lib as pl
from pipeline_lib.errors import InvalidParameterError
from pipeline_lib import samplers
from pipeline_lib.generate import presets
from pipeline_lib.memory import plan_memory


def test_every_preset_is_consistent():
    import diffusers

    assert {"absolute-reality", "realistic-vision-v6", "epicrealism", "cyberrealistic-v3",
            "sdxl-base", "sdxl-turbo", "sd-1.4", "sd-1.5", "sd-2.1"} <= set(presets.PRESETS)
    for p in presets.PRESETS.values():
        cls = getattr(diffusers, p.pipeline_class)
        assert hasattr(cls, "from_pretrained") and hasattr(cls, "from_single_file"), p.name
        assert p.size[0] % p.multiple == 0 and p.size[1] % p.multiple == 0, p.name
        assert p.multiple == (64 if "XL" in p.pipeline_class else 8), p.name
        assert p.scheduler in samplers.SCHEDULERS, p.name
        assert p.step_range[0] <= p.steps <= p.step_range[1], p.name
        # built-in presets name Hub repos; presets registered at run time (the notebooks' tiny
        # offline ones, in this same test process) may name local folders
        assert p.repo.count("/") == 1 or Path(p.repo).is_dir() or p.repo == presets.BUILT_IN, p.name
    for name, (cls_name, _cfg, _label) in samplers.SCHEDULERS.items():
        assert cls_name is None or hasattr(diffusers, cls_name), name
    turbo = presets.get_preset("sdxl-turbo")
    assert (turbo.steps, turbo.guidance, turbo.size, turbo.step_range) == (1, 0.0, (512, 512), (1, 4))
    rv = presets.get_preset("realistic-vision-v6")
    assert rv.repo == "SG161222/Realistic_Vision_V6.0_B1_noVAE" and rv.vae == "stabilityai/sd-vae-ft-mse"
    assert presets.get_preset("sdxl-base-refiner").refiner == "stabilityai/stable-diffusion-xl-refiner-1.0"
    rows = pl.list_presets()
    assert [r["name"] for r in rows] == list(presets.PRESETS)


@pytest.mark.parametrize("aspect, model, expected", [
    ("portrait", "absolute-reality", (512, 768)),
    ("square", "sd-1.5", (512, 512)),
    ("landscape", "absolute-reality", (768, 512)),
    ("portrait-9:16", "sdxl-base", (768, 1344)),
    ("portrait", "sdxl-base", (832, 1280)),
    ("landscape-16:9", "sdxl-turbo", (704, 384)),
    ("4:5", "sd-1.5", (456, 576)),
])
def test_aspect_sizes(aspect, model, expected):
    w, h = presets.size_for_aspect(aspect, model)
    assert (w, h) == expected
    m = presets.get_preset(model).multiple
    assert w % m == 0 and h % m == 0
    ra, rb = presets.parse_aspect(aspect)
    assert abs(w / h - ra / rb) / (ra / rb) < 0.08  # ratio kept up to rounding


def test_aspect_errors():
    with pytest.raises(InvalidParameterError, match="unknown aspect 'tall'"):
        presets.size_for_aspect("tall")


def test_memory_profiles_on_cpu():
    plan = plan_memory("auto", "cpu")
    assert (plan.profile, plan.dtype, plan.offload) == ("cpu", "float32", None)
    with pytest.raises(InvalidParameterError, match="fp16 is not implemented"):
        plan_memory("fast", "cpu", dtype="fp16")


def test_cpu_bf16_plan_only_where_native(monkeypatch):
    from pipeline_lib import memory

    monkeypatch.setattr(memory, "supports_bf16", lambda d: False)
    with pytest.raises(InvalidParameterError, match="no native bf16.*AVX512-BF16"):
        plan_memory("auto", "cpu", dtype="bf16")
    monkeypatch.setattr(memory, "supports_bf16", lambda d: True)
    plan = plan_memory("auto", "cpu", dtype="bf16")
    assert (plan.profile, plan.dtype, plan.offload) == ("cpu", "bfloat16", None)
    assert plan_memory("auto", "cpu").dtype == "float32"  # never without being asked


def test_bf16_refused_without_native_support(monkeypatch):
    import torch

    from pipeline_lib import memory

    # pretend to be a 16 GB P100 (compute 6.0)
    monkeypatch.setattr(memory, "resolve_device", lambda d: torch.device("cuda", 0))
    monkeypatch.setattr(memory, "supports_bf16", lambda d: False)

    class Props:
        total_memory = 16 * 1024 ** 3

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    plan = plan_memory("auto", "cuda")
    assert (plan.profile, plan.dtype, plan.offload, plan.attention) == ("fast", "float16", None, "sdpa")
    with pytest.raises(InvalidParameterError, match="no native bf16"):
        plan_memory("auto", "cuda", dtype="bf16")
    Props.total_memory = 8 * 1024 ** 3
    assert plan_memory("auto", "cuda").offload == "model"
    assert plan_memory("low", "cuda").offload == "sequential"
    if importlib.util.find_spec("xformers") is None:
        assert plan_memory("fast", "cuda", xformers=True).attention == "sdpa"


def test_lazy_import_keeps_pipeline_lib_light():
    import subprocess
    import sys

    code = ("import sys, pipeline_lib; assert 'diffusers' not in sys.modules; "
            "pipeline_lib.generate; pipeline_lib.read_metadata; assert 'diffusers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_generate_never_overwrites(tmp_path, capsys):
    from pipeline_lib.cli import main
    from pipeline_lib.testing import tiny_sd_pipeline_dir

    model = str(tiny_sd_pipeline_dir(tmp_path / "models"))
    out = tmp_path / "out"
    args = ["generate", "a cat", "--model", model, "--steps", "1", "--size", "64x64", "--seed", "7",
            "-n", "2", "-o", str(out)]
    assert main(args) == 0
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["7-1.png", "7.png", "8-1.png", "8.png"]
    assert pl.read_metadata(out / "8.png")["seed"] == 8
    assert main(["generate", "a cat", "--model", model, "--steps", "1", "--size", "64x64",
                 "--seed", "3", "--upscale", "realesr-animevideov3", "--target", "100", "-o", str(out)]) == 0
    from PIL import Image

    assert Image.open(out / "3.png").size == (100, 100)
    assert main(["generate", "x", "--model", "absolute-realty", "-o", str(out)]) == 2
    assert "Did you mean 'absolute-reality'" in capsys.readouterr().err
