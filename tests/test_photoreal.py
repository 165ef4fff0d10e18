"""Photoreal workflow on tiny random pipelines (CPU, offline): LoRAs, embeddings, A1111 prompt
weighting and long prompts, clip skip, img2img, hires fix, tiled refine, their metadata."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from conftest import psnr

import pipeline_lib as pl
from pipeline_lib.errors import InvalidParameterError, UnknownModelError

FAST = dict(steps=1, width=64, height=64, progress=False)  # one step: this CPU is shared


def arr(img):
    return np.asarray(img, dtype=np.int16)


def _peft_lora(sd_dir, seed: int) -> dict:
    """A random LoRA for the tiny UNet's attention projections, made with peft."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_" in name:  # peft starts B at zero: an inert LoRA; make it bite
                p.copy_(torch.randn(p.shape, generator=gen) * 0.6)
    return get_peft_model_state_dict(pipe.unet)


@pytest.fixture(scope="module")
def lora_file(sd_dir, tiny_root):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    folder = tiny_root / "loras"
    StableDiffusionPipeline.save_lora_weights(
        str(folder), unet_lora_layers=convert_state_dict_to_diffusers(_peft_lora(sd_dir, 1)),
        weight_name="detail.safetensors")
    return folder / "detail.safetensors"


@pytest.fixture(scope="module")
def kohya_file(sd_dir, tiny_root):
    """The same kind of LoRA in kohya's layout (A1111/Civitai): lora_unet_<path with _>
    .lora_down/.lora_up/.alpha."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for key, value in _peft_lora(sd_dir, 2).items():
        module, part = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(4.0)
    path = tiny_root / "loras" / "kohya_style.safetensors"
    save_file(out, str(path))
    return path


def test_lora_weight_zero_one_and_unloaded_after(sd_dir, lora_file):
    base = pl.generate("a red apple", model=sd_dir, seed=4, **FAST)[0]
    zero = pl.generate("a red apple", model=sd_dir, seed=4, loras=[(str(lora_file), 0.0)], **FAST)[0]
    one = pl.generate("a red apple", model=sd_dir, seed=4, loras=[(str(lora_file), 1.0)], **FAST)[0]
    after = pl.generate("a red apple", model=sd_dir, seed=4, **FAST)[0]
    assert psnr(base.image, zero.image) >= 50
    assert np.abs(arr(base.image) - arr(one.image)).max() > 10
    assert np.array_equal(arr(base.image), arr(after.image))  # adapters came off
    assert one.params["loras"] == [(str(lora_file), 1.0)]
    assert len(one.params["lora_hashes"]["detail"]) == 12


def test_kohya_layout_and_two_loras_at_once(sd_dir, lora_file, kohya_file):
    base = pl.generate("a boat", model=sd_dir, seed=6, **FAST)[0]
    kohya = pl.generate("a boat", model=sd_dir, seed=6, loras=[(str(kohya_file), 1.0)], **FAST)[0]
    both = pl.generate("a boat", model=sd_dir, seed=6,
                       loras=[(str(lora_file), 0.8), (str(kohya_file), 1.0)], **FAST)[0]
    assert np.abs(arr(base.image) - arr(kohya.image)).max() > 10
    assert np.abs(arr(both.image) - arr(base.image)).max() > 5
    assert np.abs(arr(both.image) - arr(kohya.image)).max() > 5
    assert set(both.params["lora_hashes"]) == {"detail", "kohya_style"}
    after = pl.generate("a boat", model=sd_dir, seed=6, **FAST)[0]
    assert np.array_equal(arr(base.image), arr(after.image))


def test_lora_tag_in_prompt_uses_lora_dir_and_round_trips(sd_dir, lora_file, monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINE_LIB_LORA_DIR", str(lora_file.parent))
    tagged = pl.generate("a red apple <lora:detail:0.7>", model=sd_dir, seed=8, **FAST)[0]
    direct = pl.generate("a red apple", model=sd_dir, seed=8, loras=[(str(lora_file), 0.7)], **FAST)[0]
    assert np.array_equal(arr(tagged.image), arr(direct.image))  # the tag is stripped from the text
    path = direct.save(tmp_path / "lora.png")
    meta = pl.read_metadata(path)
    assert meta["prompt"] == "a red apple <lora:detail:0.7>"
    again = pl.generate(**meta, progress=False)[0]
    assert np.array_equal(arr(again.image), arr(direct.image))
    assert "Lora hashes: \"detail: " in direct.parameters_text()
    with pytest.raises(UnknownModelError, match=r"LoRA 'nope' not found in .*available: .*detail"):
        pl.generate("x <lora:nope:1>", model=sd_dir, seed=1, **FAST)
    with pytest.raises(InvalidParameterError, match=r"LoRA weight"):
        pl.generate("x", model=sd_dir, seed=1, loras=[(str(lora_file), "lots")], **FAST)


def test_embedding_acts_only_where_its_token_is(sd_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "tinyemb.safetensors"
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 3},
              str(path))
    with_tok = pl.generate("a photo of tinyemb", model=sd_dir, seed=2, embeddings=[str(path)], **FAST)[0]
    text_only = pl.generate("a photo of tinyemb", model=sd_dir, seed=2, **FAST)[0]
    plain = pl.generate("a photo", model=sd_dir, seed=2, embeddings=[str(path)], **FAST)[0]
    plain_ref = pl.generate("a photo", model=sd_dir, seed=2, **FAST)[0]
    assert np.abs(arr(with_tok.image) - arr(text_only.image)).max() > 5
    assert np.array_equal(arr(plain.image), arr(plain_ref.image))
    assert list(with_tok.params["ti_hashes"]) == ["tinyemb"] and "ti_hashes" not in plain.params
    assert "tinyemb" not in pl.generate.__globals__["get_loaded"](sd_dir).pipe.tokenizer.get_vocab()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a1111_weighting(family, sd_dir, sdxl_dir):
    model = sd_dir if family == "sd" else sdxl_dir
    plain = pl.generate("a red apple", model=model, seed=3, **FAST)[0]
    same = pl.generate("a (red:1.0) apple", model=model, seed=3, **FAST)[0]
    more = pl.generate("a (red:1.5) apple", model=model, seed=3, **FAST)[0]
    assert np.array_equal(arr(plain.image), arr(same.image))
    assert np.abs(arr(plain.image) - arr(more.image)).max() > 0
    assert more.params["prompt"] == "a (red:1.5) apple"


def test_long_prompt_is_chunked_not_cut(sd_dir, caplog):
    long = "a very detailed portrait, " * 6  # byte-level tokenizer: ~150 tokens
    with caplog.at_level(logging.WARNING):
        a = pl.generate(long + "with a cat", model=sd_dir, seed=3, **FAST)[0]
        b = pl.generate(long + "with a dog", model=sd_dir, seed=3, **FAST)[0]
    assert np.abs(arr(a.image) - arr(b.image)).max() > 0  # the last words still count
    assert "truncat" not in caplog.text and "longer than the specified" not in caplog.text


def test_clip_skip_changes_and_round_trips(sd_dir, tmp_path):
    one = pl.generate("a house", model=sd_dir, seed=5, **FAST)[0]
    two = pl.generate("a house", model=sd_dir, seed=5, clip_skip=2, **FAST)[0]
    assert np.abs(arr(one.image) - arr(two.image)).max() > 0  # another layer, another picture
    assert "Clip skip: 2" in two.parameters_text()
    meta = pl.read_metadata(two.save(tmp_path / "cs.png"))
    assert meta["clip_skip"] == 2
    assert np.array_equal(arr(pl.generate(**meta, progress=False)[0].image), arr(two.image))
    with pytest.raises(InvalidParameterError, match=r"clip_skip must be in 1\.\.12"):
        pl.generate("x", model=sd_dir, seed=1, clip_skip=0, **FAST)


def test_hires_fix_latent_doubles_and_round_trips(sd_dir, tmp_path):
    done = []
    g = pl.generate("a lighthouse", model=sd_dir, seed=9, hires_scale=2, hires_strength=0.5,
                    on_progress=lambda d, t: done.append((d, t)), **FAST)[0]
    assert g.image.size == (128, 128)
    assert (g.params["width"], g.params["height"]) == (64, 64)  # A1111: Size is the first pass
    assert done[-1][0] == done[-1][1] == 2  # 1 base step + 1 hires step, one total
    text = g.parameters_text()
    for field in ("Hires upscale: 2", "Hires upscaler: latent", "Denoising strength: 0.5"):
        assert field in text
    meta = pl.read_metadata(g.save(tmp_path / "hires.png"))
    assert meta["hires_scale"] == 2.0 and meta["hires_strength"] == 0.5
    assert np.array_equal(arr(pl.generate(**meta, progress=False)[0].image), arr(g.image))


@pytest.mark.parametrize("bad", [0, -0.1, 1.5, float("nan"), "x"])
def test_hires_strength_validated(sd_dir, bad):
    with pytest.raises(InvalidParameterError, match=r"hires_strength must be a finite number > 0"):
        pl.generate("x", model=sd_dir, seed=1, hires_scale=2, hires_strength=bad, **FAST)


@pytest.fixture(scope="module")
def tiny_upscaler(tiny_root):
    """A random 2× Real-ESRGAN-compact (SRVGG) model file: any upscaler name works alike."""
    import torch
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    path = tiny_root / "tiny-x2.pth"
    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), str(path))
    return path


def test_hires_fix_with_a_pixel_upscaler(sd_dir, tiny_upscaler):
    path = tiny_upscaler
    g = pl.generate("a lighthouse", model=sd_dir, seed=9, hires_scale=1.5,
                    hires_upscaler=str(path), **FAST)[0]
    assert g.image.size == (96, 96) and g.params["hires_upscaler"] == str(path)


def test_img2img_same_seed_same_pixels(sd_dir, lora_file):
    src = pl.generate("a cat", model=sd_dir, seed=1, **FAST)[0].image
    a = pl.img2img(src, "a cat", model=sd_dir, strength=0.5, seed=3, steps=2, progress=False)[0]
    b = pl.img2img(src, "a cat", model=sd_dir, strength=0.5, seed=3, steps=2, progress=False)[0]
    c = pl.img2img(src, "a cat", model=sd_dir, strength=0.5, seed=3, steps=2, progress=False,
                   loras=[(str(lora_file), 1.0)])[0]
    assert a.image.size == src.size and np.array_equal(arr(a.image), arr(b.image))
    assert np.abs(arr(a.image) - arr(c.image)).max() > 5
    assert "Denoising strength: 0.5" in a.parameters_text()
    with pytest.raises(InvalidParameterError, match=r"strength must be a finite number > 0"):
        pl.img2img(src, "a cat", model=sd_dir, strength=0, progress=False)


def _border_jump(img, border: int) -> tuple[float, float]:
    """Mean |step| between neighbouring columns at ``border`` vs over the whole image."""
    a = np.asarray(img, dtype=np.float32)
    steps = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))
    return float(steps[border - 1]), float(steps.mean())


def test_refine_same_size_no_seam_same_seed(sd_dir, caplog):
    src = pl.generate("a field", model=sd_dir, seed=1, **FAST)[0].image.resize((96, 96))
    with caplog.at_level(logging.INFO, logger="pipeline_lib"):
        a = pl.refine(src, "a field", model=sd_dir, strength=0.5, tile=64, overlap=16, steps=2,
                      seed=7, progress=False)
    assert "refine plan (sd15" in caplog.text and "4 tiles of 64px" in caplog.text
    assert a.image.size == src.size
    assert np.abs(arr(a.image) - arr(src)).max() > 5
    # tiles start at 0 and 40 (two 56-px tiles): their border is column 48, row 48
    at_border, overall = _border_jump(a.image, 48)
    assert at_border <= overall * 1.25
    at_border, overall = _border_jump(a.image.transpose(5), 48)  # 5 = TRANSPOSE: rows
    assert at_border <= overall * 1.25
    b = pl.refine(src, "a field", model=sd_dir, strength=0.5, tile=64, overlap=16, steps=2,
                  seed=7, progress=False)
    assert np.array_equal(arr(a.image), arr(b.image))
    assert a.params["refine_strength"] == 0.5 and "Ultimate SD upscale tile_width: 64" in a.parameters_text()


def test_refine_memory_plan_fits_16_gb():
    from pipeline_lib.refine_plan import GIB

    for family in ("sd15", "sdxl"):
        for controlnet in (False, True):
            plan = pl.refine_memory_plan(family, size=(2048, 2048), memory="balanced",
                                         controlnet=controlnet)
            assert plan.fits(16 * GIB), plan.describe()
            assert plan.peak_bytes > 2 * GIB and "planned GPU peak" in plan.describe()
    xl = pl.refine_memory_plan("sdxl", size=(2048, 2048), memory="fast")
    assert xl.tile == 1024 and xl.tiles == 9
    with pytest.raises(InvalidParameterError):
        pl.refine_memory_plan("sd15", memory="huge")


def test_refine_accepts_a_tiny_controlnet(sd_dir, tiny_root):
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet")
    folder = tiny_root / "tiny-controlnet"
    ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8)).save_pretrained(str(folder))
    src = pl.generate("a field", model=sd_dir, seed=1, **FAST)[0].image
    out = pl.refine(src, "a field", model=sd_dir, strength=0.5, steps=2, seed=7, progress=False,
                    controlnet=str(folder))
    assert out.image.size == src.size and out.params["refine_controlnet"] == str(folder)
    with pytest.raises(InvalidParameterError, match="multiple of 8"):
        pl.refine(src, "a field", model=sd_dir, tile=60, progress=False)


def test_refine_seconds_per_megapixel_is_logged(sd_dir, caplog):
    src = pl.generate("a field", model=sd_dir, seed=1, **FAST)[0].image
    with caplog.at_level(logging.INFO, logger="pipeline_lib"):
        pl.refine(src, "a field", model=sd_dir, strength=0.3, steps=4, seed=1, progress=False)
    line = next(r.getMessage() for r in caplog.records if "s/MP" in r.getMessage())
    assert "refined 64x64 in 1 tiles" in line
    assert math.isfinite(float(line.split("(")[-1].split(" s/MP")[0]))


def test_text_to_image_upscale_then_refine(sd_dir, tiny_upscaler, tmp_path):
    out = pl.text_to_image("a field", model=sd_dir, upscaler=str(tiny_upscaler), size=96,
                           refine_strength=0.3, seed=2, **FAST)[0]
    assert out.image.size == (96, 96)
    assert out.params["refine_strength"] == 0.3 and out.params["upscale_size"] == "96x96"
    meta = pl.read_metadata(out.save(tmp_path / "t2i.png"), extra=True)
    assert meta["refine_strength"] == 0.3 and meta["refine_tile"] == 64
    with pytest.raises(InvalidParameterError, match="refine_strength"):
        pl.text_to_image("a field", model=sd_dir, upscaler=str(tiny_upscaler), size=96,
                         refine_strength=2, seed=2, **FAST)
