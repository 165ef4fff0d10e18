"""Speed options of generation (fused QKV, channels_last, compile) give the same images as the
plain path; options validate. CPU, tiny random pipelines; no timing assertions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pipeline_lib as pl
from pipeline_lib.errors import InvalidParameterError
from pipeline_lib.generate import pipeline as pipeline_mod
from pipeline_lib.memory import plan_memory

FAST = dict(steps=2, width=64, height=64, progress=False, seed=7)
# Same maths in another kernel order: fp32 rounding only. Latents (float) must agree to 1e-4
# absolute (values are O(1)); decoded 8-bit images may differ by at most 1 level.
LATENT_ATOL = 1e-4
PIXEL_MAX_DIFF = 1


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def model_dir(request, tmp_path_factory):
    from pipeline_lib.testing import tiny_sd_pipeline_dir, tiny_sdxl_pipeline_dir

    root = tmp_path_factory.getbasetemp() / "speed-tiny"
    build = tiny_sd_pipeline_dir if request.param == "sd" else tiny_sdxl_pipeline_dir
    return str(build(root))


def _run(model, output_type="pil", **speed):
    img = pl.generate("a lighthouse at dusk", model=model, output_type=output_type, **FAST,
                      **speed)[0].image
    return img.float().numpy() if output_type == "latent" else np.asarray(img, dtype=np.int16)


_PLAIN: dict[str, tuple] = {}


def _plain(model):
    # One plain reference per model: each option set is a pipeline load, slow on a busy CPU.
    if model not in _PLAIN:
        _PLAIN[model] = (_run(model, "latent", fuse_qkv=False, channels_last=False),
                         _run(model, fuse_qkv=False, channels_last=False))
    return _PLAIN[model]


@pytest.mark.parametrize("speed", [dict(fuse_qkv=True), dict(channels_last=True),
                                   dict(fuse_qkv=True, channels_last=True)],
                         ids=["fused", "channels_last", "both"])
def test_optimised_path_matches_plain(model_dir, speed):
    plain_lat, plain_img = _plain(model_dir)
    fast_lat = _run(model_dir, "latent", **speed)
    pipe = pipeline_mod.current_pipeline().pipe
    procs = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    if speed.get("fuse_qkv"):  # the option really took effect
        assert procs == {"FusedAttnProcessor2_0"}
        assert any(hasattr(m, "to_qkv") for m in pipe.unet.modules())
    else:
        assert "FusedAttnProcessor2_0" not in procs
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == bool(speed.get("channels_last"))
    fast_img = _run(model_dir, **speed)
    assert fast_lat.shape == plain_lat.shape
    assert np.abs(fast_lat - plain_lat).max() <= LATENT_ATOL
    assert fast_img.shape == plain_img.shape
    assert np.abs(fast_img - plain_img).max() <= PIXEL_MAX_DIFF


def test_cpu_defaults_are_plain_and_cuda_defaults_optimised(monkeypatch):
    monkeypatch.delenv("PIPELINE_LIB_COMPILE", raising=False)
    cpu = plan_memory("auto", "cpu", channels_last=None, fuse_qkv=None, compile=None)
    assert (cpu.channels_last, cpu.fuse_qkv, cpu.compile) == (False, False, False)
    if torch.cuda.is_available():
        gpu = plan_memory("fast", "cuda", channels_last=None, fuse_qkv=None, compile=None)
        assert (gpu.channels_last, gpu.fuse_qkv, gpu.compile) == (True, True, False)
        assert gpu.dtype == "float16"


def test_compile_env(monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_COMPILE", "1")
    assert plan_memory("auto", "cpu", compile=None).compile is True
    assert plan_memory("auto", "cpu", compile=False).compile is False  # explicit beats the env
    monkeypatch.setenv("PIPELINE_LIB_COMPILE", "perhaps")
    with pytest.raises(InvalidParameterError, match="PIPELINE_LIB_COMPILE='perhaps'"):
        plan_memory("auto", "cpu", compile=None)


@pytest.mark.parametrize("name", ["channels_last", "fuse_qkv", "compile"])
def test_options_validate(name, model_dir):
    with pytest.raises(InvalidParameterError, match=f"{name} must be True, False or None"):
        pl.generate("x", model=model_dir, **FAST, **{name: "yes"})


def test_each_option_set_is_its_own_cached_pipeline(model_dir):
    _run(model_dir, "latent", fuse_qkv=False)
    plain = pipeline_mod.current_pipeline().pipe
    _run(model_dir, "latent", fuse_qkv=True)
    assert pipeline_mod.current_pipeline().pipe is not plain
    fused = pipeline_mod.current_pipeline().pipe
    _run(model_dir, "latent", fuse_qkv=True)
    assert pipeline_mod.current_pipeline().pipe is fused  # no reload for the same options
