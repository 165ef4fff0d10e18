"""Exact ncnn → PyTorch conversion of the offline Real-ESRGAN weights."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pipeline_lib.errors import WeightsError
from pipeline_lib.upscale import load_upscaler, weights
from pipeline_lib.upscale.ncnn_format import load_ncnn_model
from pipeline_lib.upscale.registry import MODELS

ncnn = pytest.importorskip("ncnn")

CASES = ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realesr-animevideov3"]


def run_ncnn(stem: str, rgb01: np.ndarray) -> np.ndarray:
    param, binf = weights.ncnn_files(stem)
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(param))
    net.load_model(str(binf))
    chw = np.ascontiguousarray(rgb01.transpose(2, 0, 1))  # kept alive while the extractor runs
    ex = net.create_extractor()
    ex.input("data", ncnn.Mat(chw))
    _, out = ex.extract("output")
    return np.array(out).clip(0, 1)


@pytest.mark.parametrize("name", CASES)
def test_converted_weights_match_ncnn_within_one_level(name, small_photo):
    rgb = np.asarray(small_photo.crop((0, 0, 24, 20)), dtype=np.float32) / 255
    spec = MODELS[name]
    up = load_upscaler(name, device="cpu", dtype="fp32")  # ncnn computes in fp32
    ours = up.run(rgb.transpose(2, 0, 1)[None].copy())[0]
    ref = run_ncnn(spec.ncnn_stem, rgb)
    assert ours.shape == ref.shape == (3, 80, 96)
    a, b = np.round(ours * 255), np.round(ref * 255)
    assert np.abs(a - b).max() <= 1, f"{name}: max diff {np.abs(a - b).max()}/255"
    mse = np.mean((a - b) ** 2)
    psnr = 10 * np.log10(255 ** 2 / mse) if mse else float("inf")
    print(f"{name}: converted vs ncnn PSNR {psnr:.1f} dB")
    assert psnr > 60


def test_every_byte_of_the_bin_is_used(tmp_path):
    param, binf = weights.ncnn_files("REALESRGAN_ANIMAVIDEOV3_UP4X")
    layers = load_ncnn_model(param, binf)
    n_values = sum(a.size for layer in layers for a in layer.blobs.values())
    assert n_values > 500_000
    cut = tmp_path / "cut.bin"
    cut.write_bytes(binf.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="ends early"):
        load_ncnn_model(param, cut)
    extra = tmp_path / "extra.bin"
    extra.write_bytes(binf.read_bytes() + b"\0" * 8)
    with pytest.raises(WeightsError, match="8 bytes left over"):
        load_ncnn_model(param, extra)
    bad = tmp_path / "bad.param"
    bad.write_text("hello\n")
    with pytest.raises(WeightsError, match="not an ncnn .param"):
        load_ncnn_model(bad, binf)


def test_converted_cache_is_reused_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    spec = MODELS["realesr-animevideov3"]
    first = weights.converted_from_ncnn(spec)
    stamp = first.stat().st_mtime_ns
    assert weights.converted_from_ncnn(spec) == first
    assert first.stat().st_mtime_ns == stamp, "second call must not convert again"
    from safetensors.numpy import load_file

    good = load_file(str(first))
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # a truncated cache entry
    again = weights.converted_from_ncnn(spec)
    # compare contents, not bytes: safetensors may order its header differently per write
    rebuilt = load_file(str(again))
    assert rebuilt.keys() == good.keys()
    assert all(np.array_equal(rebuilt[k], good[k]) for k in good)
    assert weights.verified(again, None)


def test_converted_state_dict_is_safetensors_with_expected_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    from safetensors.torch import load_file

    sd = load_file(str(weights.converted_from_ncnn(MODELS["realesrgan-x4plus"])))
    assert sd["conv_first.weight"].shape == (64, 3, 3, 3)
    assert sd["body.22.rdb3.conv5.weight"].shape == (64, 192, 3, 3)
    assert sd["conv_last.weight"].shape == (3, 64, 3, 3)
    assert len(sd) == 351 * 2
    assert all(t.dtype == torch.float32 for t in sd.values())


def test_pickle_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(WeightsError, match="refusing to load"):
        load_upscaler(str(bad), device="cpu")
    assert (tmp_path / "victim").is_dir()


def test_stable_diffusion_checkpoint_is_not_an_upscaler(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(WeightsError, match="Stable Diffusion checkpoint"):
        load_upscaler(str(path), device="cpu")


def test_offline_download_error_names_url_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    spec = MODELS["realesrgan-x2plus"]
    with pytest.raises(WeightsError) as err:
        load_upscaler("realesrgan-x2plus", device="cpu", backend="torch")  # auto would fall back
    msg = str(err.value)
    assert spec.weights.url in msg and str(tmp_path) in msg and spec.weights.sha256 in msg
