"""Generation on tiny random pipelines built at test time (CPU, offline)."""
from __future__ import annotations

import logging
from pathlib import Path
import math

import numpy as np
import pytest

from conftest import psnr

import pipeline_lib as pl
from pipeline_lib.errors import InvalidParameterError, OutputExistsError, UnknownModelError
from pipeline_lib.generate import pipeline as pipeline_mod

FAST = dict(steps=2, width=64, height=64, progress=False)


def arr(img):
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_pixels_and_seed_reported(sd_dir):
    a = pl.generate("a red apple", model=sd_dir, seed=1234, **FAST)[0]
    b = pl.generate("a red apple", model=sd_dir, seed=1234, **FAST)[0]
    c = pl.generate("a red apple", model=sd_dir, seed=1235, **FAST)[0]
    assert a.seed == 1234 and a.params["seed"] == 1234
    assert a.image.size == (64, 64)
    assert np.array_equal(arr(a.image), arr(b.image))
    assert np.abs(arr(a.image) - arr(c.image)).max() > 10  # another seed, another picture
    r = pl.generate("a red apple", model=sd_dir, **FAST)[0]
    assert isinstance(r.seed, int) and 0 <= r.seed <= 2 ** 32 - 1
    again = pl.generate("a red apple", model=sd_dir, seed=r.seed, **FAST)[0]
    assert np.array_equal(arr(r.image), arr(again.image))


def test_batch_uses_consecutive_seeds(sd_dir):
    batch = pl.generate("a boat", model=sd_dir, seed=50, num_images=3, **FAST)
    assert [g.seed for g in batch] == [50, 51, 52]
    single = pl.generate("a boat", model=sd_dir, seed=51, **FAST)[0]
    # image 1 of the batch is image "seed 51" on its own (batched matmuls may differ in the last bit)
    assert psnr(batch[1].image, single.image) > 40
    assert np.abs(arr(batch[0].image) - arr(batch[1].image)).max() > 10


def test_negative_prompt_changes_the_image(sd_dir):
    plain = pl.generate("a house", model=sd_dir, seed=7, negative_prompt="", **FAST)[0]
    neg = pl.generate("a house", model=sd_dir, seed=7, negative_prompt="blurry, dark", **FAST)[0]
    assert neg.params["negative_prompt"] == "blurry, dark"
    assert np.abs(arr(plain.image) - arr(neg.image)).max() > 5


def test_size_rounding_warns(sd_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline_lib"):
        g = pl.generate("x", model=sd_dir, seed=1, steps=1, width=70, height=60, progress=False)[0]
    assert g.image.size == (72, 64) and (g.params["width"], g.params["height"]) == (72, 64)
    assert "not a multiple of 8" in caplog.text and "72x64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline_lib"):
        pl.generate("x", model=sd_dir, seed=1, steps=1, width=64, height=80, progress=False)
    assert "not a multiple" not in caplog.text


def test_default_size_and_one_side(sd_dir):
    # tiny UNet sample_size 8 × VAE factor 8 → 64² default; one side keeps the default aspect
    assert pl.generate("x", model=sd_dir, seed=1, steps=1, progress=False)[0].image.size == (64, 64)
    assert pl.generate("x", model=sd_dir, seed=1, steps=1, width=128, progress=False)[0].image.size == (128, 128)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), r"steps must be in 1\.\.1000, got 0"),
    (dict(steps=-3), r"steps must be in 1\.\.1000"),
    (dict(guidance=float("nan")), r"guidance must be a finite number"),
    (dict(guidance=float("inf")), r"guidance must be a finite number"),
    (dict(seed=-1), r"seed must be in 0\.\.4294967295 \(2\*\*32-1"),
    (dict(seed=2 ** 32), r"seed must be in 0\.\.4294967295"),
    (dict(seed=2 ** 32 - 1, num_images=2), r"batch of 2 uses seed\.\.seed\+1"),
    (dict(width=0, height=64), r"width must be ≥ 1 pixel, got 0"),
    (dict(width=64, height=100000), r"height=100000 is larger than 4096.*upscale"),
    (dict(width=64.5, height=64), r"width must be a whole number of pixels"),
    (dict(num_images=0), r"num_images must be in 1\.\.64"),
    (dict(scheduler="eulr-a"), r"unknown scheduler 'eulr-a'.*Did you mean 'euler-a'"),
    (dict(memory="huge"), r"unknown memory profile 'huge'"),
])
def test_clear_errors(sd_dir, kwargs, match):
    args = dict(FAST, model=sd_dir, seed=1)
    args.update(kwargs)
    with pytest.raises(InvalidParameterError, match=match):
        pl.generate("x", **args)


def test_unknown_preset_suggests():
    with pytest.raises(UnknownModelError, match=r"unknown model preset 'absolute-realty'.*Did you mean 'absolute-reality'"):
        pl.generate("x", model="absolute-realty")
    with pytest.raises(UnknownModelError, match=r"does not exist"):
        pl.generate("x", model="./no/such/folder")
    with pytest.raises(UnknownModelError, match=r"checkpoint .*missing\.safetensors does not exist"):
        pl.generate("x", model="missing.safetensors")


def test_long_prompt_chunked_not_truncated(sd_dir, caplog):
    # A1111-style: past 77 tokens the prompt is encoded in chunks; nothing is cut, no warning
    long = "a very detailed portrait " * 10  # byte-level tokenizer: ~1 token per character
    with caplog.at_level(logging.WARNING, logger="pipeline_lib"):
        g = pl.generate(long, model=sd_dir, seed=3, **FAST)[0]
    assert "truncated" not in caplog.text
    assert g.params["prompt"] == long  # the record keeps what was asked
    tail = pl.generate(long + "purple elephants", model=sd_dir, seed=3, **FAST)[0]
    assert not np.array_equal(arr(g.image), arr(tail.image))


def test_metadata_round_trip_recreates_pixels(sd_dir, tmp_path):
    g = pl.generate("a lighthouse, at dusk: \"moody\"", model=sd_dir, seed=99,
                    negative_prompt="fog, rain", scheduler="dpm++2m-karras", **FAST)[0]
    path = g.save(tmp_path / "img.png")
    meta = pl.read_metadata(path)
    assert meta == {"prompt": g.params["prompt"], "negative_prompt": "fog, rain", "steps": 2,
                    "guidance": 7.0, "seed": 99, "width": 64, "height": 64,
                    "model": Path(sd_dir).name, "scheduler": "dpm++2m-karras"}
    from PIL import Image

    text = Image.open(path).info["parameters"]
    assert "Negative prompt: fog, rain" in text
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text  # A1111 ≥ 1.9's spelling
    assert sd_dir not in text  # a local model is named by its folder, never its absolute path
    assert "Steps: 2" in text and "CFG scale: 7" in text and "Seed: 99" in text and "Size: 64x64" in text
    again = pl.generate(**{**meta, "model": sd_dir}, progress=False)[0]
    assert np.array_equal(arr(again.image), arr(g.image))
    with pytest.raises(OutputExistsError):
        g.save(path)


def test_parse_a1111_text():
    from pipeline_lib.metadata import parse_parameters

    text = ("masterpiece, a woman\nin the rain\nNegative prompt: ugly, blurry\n"
            "Steps: 25, Sampler: Euler a, CFG scale: 6.5, Seed: 3141, Size: 512x768, "
            "Model hash: abc123, Model: epicrealism, Lora hashes: \"x: 1, y: 2\"")
    p = parse_parameters(text)
    assert p["prompt"] == "masterpiece, a woman\nin the rain"
    assert p["negative_prompt"] == "ugly, blurry"
    assert (p["steps"], p["guidance"], p["seed"], p["width"], p["height"]) == (25, 6.5, 3141, 512, 768)
    assert p["scheduler"] == "euler-a" and p["model"] == "epicrealism"
    assert p["lora_hashes"] == {"x": "1", "y": "2"} and p["model_hash"] == "abc123"


def test_read_metadata_errors(tmp_path):
    from PIL import Image

    from pipeline_lib.errors import ImageReadError

    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(ImageReadError, match="carries no generation parameters"):
        pl.read_metadata(tmp_path / "plain.png")
    with pytest.raises(ImageReadError, match="no such file"):
        pl.read_metadata(tmp_path / "missing.png")


def test_cache_reuse_and_switching(sd_dir, sdxl_dir):
    p1 = pl.load_pipeline(sd_dir, device="cpu")
    assert pl.load_pipeline(sd_dir, device="cpu") is p1  # one load per process
    pl.generate("x", model=sd_dir, seed=1, **FAST)
    assert pipeline_mod.current_pipeline().pipe is p1
    p2 = pl.load_pipeline(sdxl_dir, device="cpu")
    assert type(p2).__name__ == "StableDiffusionXLPipeline"
    assert pipeline_mod.current_pipeline().pipe is p2  # the old one is no longer held
    p3 = pl.load_pipeline(sd_dir, device="cpu")
    assert p3 is not p1 and type(p3).__name__ == "StableDiffusionPipeline"


def test_scheduler_switch_and_back(sd_dir):
    a = pl.generate("x", model=sd_dir, seed=5, **FAST)[0]
    b = pl.generate("x", model=sd_dir, seed=5, scheduler="euler-a", **FAST)[0]
    assert type(pl.load_pipeline(sd_dir, device="cpu").scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    c = pl.generate("x", model=sd_dir, seed=5, scheduler="default", **FAST)[0]
    assert np.array_equal(arr(a.image), arr(c.image))
    assert not np.array_equal(arr(a.image), arr(b.image))


def test_single_file_matches_folder(sd_dir, tiny_root):
    from pipeline_lib.testing import tiny_sd_single_file

    f = tiny_sd_single_file(tiny_root)
    assert f.suffix == ".safetensors"
    pipe = pl.load_pipeline(str(f), device="cpu", config=sd_dir)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    from_file = pl.generate("a cat", model=str(f), seed=11, **FAST)[0]  # served from the cache
    from_folder = pl.generate("a cat", model=sd_dir, seed=11, **FAST)[0]
    assert np.array_equal(arr(from_file.image), arr(from_folder.image))


def test_sdxl_tiny_pipeline(sdxl_dir, caplog):
    a = pl.generate("a mountain", model=sdxl_dir, seed=4, **FAST)[0]
    b = pl.generate("a mountain", model=sdxl_dir, seed=4, **FAST)[0]
    assert a.image.size == (64, 64) and np.array_equal(arr(a.image), arr(b.image))
    with caplog.at_level(logging.WARNING, logger="pipeline_lib"):
        g = pl.generate("a mountain", model=sdxl_dir, seed=4, steps=1, width=100, height=64, progress=False)[0]
    assert g.image.size == (128, 64) and "multiple of 64" in caplog.text


def test_registered_preset_defaults_and_refiner(sdxl_dir):
    from pipeline_lib.generate.presets import PRESETS, Preset

    pl.register_preset(Preset("tiny-xl-refined", sdxl_dir, "StableDiffusionXLPipeline", steps=2,
                              guidance=5.0, size=(64, 128), multiple=64, refiner=sdxl_dir,
                              high_noise_frac=0.5), replace=True)
    try:
        g = pl.generate("a fox", model="tiny-xl-refined", seed=8, progress=False)[0]
        assert g.image.size == (64, 128)
        assert (g.params["steps"], g.params["guidance"], g.params["model"]) == (2, 5.0, "tiny-xl-refined")
        assert pipeline_mod.current_pipeline().refiner is not None
        assert type(pipeline_mod.current_pipeline().refiner).__name__ == "StableDiffusionXLImg2ImgPipeline"
        again = pl.generate("a fox", model="tiny-xl-refined", seed=8, progress=False)[0]
        assert np.array_equal(arr(g.image), arr(again.image))
    finally:
        PRESETS.pop("tiny-xl-refined")


def test_text_to_image_reaches_exact_target(sd_dir, tmp_path):
    out = pl.text_to_image("a cat", model=sd_dir, upscaler="realesr-animevideov3", size=200,
                           seed=21, steps=2, width=64, height=96, progress=False)
    assert len(out) == 1
    r = out[0]
    assert r.image.size == (133, 200)  # long side 200, 2:3 aspect kept
    assert r.params["upscaler"] == "realesr-animevideov3" and r.params["upscale_size"] == "133x200"
    assert math.isclose(r.params["upscale_by"], 200 / 96, rel_tol=0.01)
    exact = pl.text_to_image("a cat", model=sd_dir, upscaler="realesr-animevideov3", size=(150, 150),
                             seed=21, **FAST)[0]
    assert exact.image.size == (150, 150)
    # the upscaled image is the generated one, bigger: shrink back and compare
    base = pl.generate(**r.generate_kwargs(), progress=False)[0]
    assert psnr(r.image.resize(base.image.size), base.image) > 20
    path = r.save(tmp_path / "big.png")
    meta = pl.read_metadata(path, extra=True)
    assert meta["upscaler"] == "realesr-animevideov3" and meta["upscale_size"] == "133x200"
    assert (meta["width"], meta["height"]) == (64, 96)


def test_text_to_image_with_x4plus(sd_dir):
    r = pl.text_to_image("a cat", model=sd_dir, size=128, seed=2, steps=1, width=32, height=32,
                         progress=False)[0]
    assert r.image.size == (128, 128) and r.params["upscaler"] == "realesrgan-x4plus"


def test_on_progress_reports_every_denoising_step(sd_dir):
    seen = []
    pl.generate("a red apple", model=sd_dir, seed=3, on_progress=lambda d, t: seen.append((d, t)), **FAST)
    assert seen == [(1, 2), (2, 2)]
    with pytest.raises(pl.InvalidParameterError, match="on_progress must be a function"):
        pl.generate("a red apple", model=sd_dir, seed=3, on_progress=5, **FAST)


def test_xformers_request_falls_back_to_sdpa_with_same_pixels(sd_dir):
    plain = pl.generate("a red apple", model=sd_dir, seed=4, **FAST)[0]
    asked = pl.generate("a red apple", model=sd_dir, seed=4, xformers=True, **FAST)[0]
    assert np.array_equal(arr(plain.image), arr(asked.image))  # CPU: SDPA either way


def test_cpu_bf16_generation_where_native(sd_dir, monkeypatch):
    """dtype='bf16' on a CPU with native bf16 (forced here, so the path runs on any CPU) loads the
    pipeline in bf16 and draws the fp32 picture up to bf16 rounding; without it, a clear error."""
    import torch

    from pipeline_lib import memory

    ref = pl.generate("a red apple", model=sd_dir, seed=7, device="cpu", **FAST)[0]
    monkeypatch.setattr(memory, "supports_bf16", lambda d: False)
    with pytest.raises(InvalidParameterError, match="no native bf16"):
        pl.generate("a red apple", model=sd_dir, seed=7, device="cpu", dtype="bf16", **FAST)
    monkeypatch.setattr(memory, "supports_bf16", lambda d: True)
    got = pl.generate("a red apple", model=sd_dir, seed=7, device="cpu", dtype="bf16", **FAST)[0]
    assert pipeline_mod.load_pipeline(sd_dir, device="cpu", dtype="bf16").unet.dtype == torch.bfloat16
    assert got.image.size == ref.image.size == (64, 64)
    a, b = arr(got.image), arr(ref.image)
    assert not np.array_equal(a, b)  # it really ran in another precision
    assert psnr(a, b) > 25.0, psnr(a, b)
