"""ncnn backend (CPU): agreement with the torch backend, model files, options, device choice."""
from __future__ import annotations

import logging
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import pipeline_lib.gpu_guard as gpu_guard
from pipeline_lib import (BackendUnavailableError, InvalidParameterError, WeightsError, unload_upscalers,
                          load_upscaler, upscale)
from pipeline_lib.cli import main as cli_main
from pipeline_lib.upscale.backends import ncnn_backend
from pipeline_lib.upscale.tiling import count_tiles
from pipeline_lib.upscale.weights import ncnn_files

from conftest import psnr

pytest.importorskip("ncnn")


@pytest.mark.parametrize("model, crop", [("realesr-animevideov3", (180, 90, 228, 130)),
                                         ("realesrgan-x4plus", (190, 95, 222, 127))])
def test_ncnn_cpu_matches_torch(photo, model, crop):
    img = photo.crop(crop)
    a = np.asarray(upscale(img, model, backend="ncnn", device="cpu", progress=False, tile=0))
    # ncnn computes in fp32: compare with torch's fp32 (a native-bf16 CPU defaults to bf16)
    b = np.asarray(upscale(img, model, backend="torch", device="cpu", progress=False, tile=0,
                           dtype="fp32"))
    assert a.shape == (img.height * 4, img.width * 4, 3)
    assert psnr(a, b) >= 60
    assert np.abs(a.astype(int) - b).max() <= 2


def test_animevideov3_x2_runs_x4_network_then_resizes(small_photo):
    res = upscale(small_photo, "realesr-animevideov3-x2", backend="ncnn", device="cpu",
                  progress=False, full_result=True)
    ref = upscale(small_photo, "realesr-animevideov3-x2", backend="torch", device="cpu",
                  progress=False, dtype="fp32")
    assert res.size == (96, 80) and res.backend == "ncnn"
    assert psnr(np.asarray(res.image), np.asarray(ref)) >= 60


def test_custom_param_bin_pair(tmp_path, small_photo):
    param, binf = ncnn_files("REALESRGAN_ANIMAVIDEOV3_UP4X")
    shutil.copy(param, tmp_path / "mine.param")
    shutil.copy(binf, tmp_path / "mine.bin")
    ref = np.asarray(upscale(small_photo, "realesr-animevideov3", backend="ncnn", device="cpu",
                             progress=False))
    # backend="auto" picks ncnn for a .param; the scale is measured, not declared
    res = upscale(small_photo, str(tmp_path / "mine.param"), progress=False, full_result=True)
    assert res.backend == "ncnn" and res.size == (192, 160)
    assert np.array_equal(np.asarray(res.image), ref)
    # .bin elsewhere, given as an option
    other = tmp_path / "weights"
    other.mkdir()
    shutil.move(tmp_path / "mine.bin", other / "elsewhere.bin")
    up = load_upscaler(tmp_path / "mine.param", backend="ncnn", device="cpu",
                       bin=str(other / "elsewhere.bin"))
    assert up.scale == 4 and list(up.native.input_names()) == ["data"]
    assert "output" in list(up.native.output_names())
    # the blobs the backend chose are the ones that work: a run gives the ×4 picture
    assert up.run(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3, 32, 32)
    with pytest.raises(WeightsError, match=r"mine\.bin: no such file.*bin="):
        load_upscaler(tmp_path / "mine.param", backend="ncnn", device="cpu", threads=1)


def test_blob_names_read_from_param(tmp_path):
    p = tmp_path / "net.param"
    p.write_text("7767517\n3 3\nInput in0 0 1 img\nConvolution c 1 1 img mid 0=3 1=3 6=81\n"
                 "ReLU r 1 1 mid result\n")
    assert ncnn_backend.blob_names(p) == ("img", "result")
    p.write_text("not a param\n")
    with pytest.raises(WeightsError, match="not an ncnn .param"):
        ncnn_backend.blob_names(p)


def test_tile_above_400_is_clamped(small_photo):
    res = upscale(small_photo, "realesr-animevideov3", backend="ncnn", device="cpu", tile=1000,
                  progress=False, full_result=True)
    assert res.tile == ncnn_backend.MAX_TILE == 400
    assert load_upscaler("realesr-animevideov3", backend="ncnn", device="cpu").max_tile == 400


def test_missing_package_says_how_to_install(monkeypatch, small_photo):
    unload_upscalers()
    monkeypatch.setitem(sys.modules, "ncnn", None)  # makes `import ncnn` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install ncnn"):
        upscale(small_photo, "realesr-animevideov3", backend="ncnn", progress=False)


def test_progress_bar_reaches_total(monkeypatch, small_photo):
    import tqdm.auto

    bars = []

    class Recording(tqdm.auto.tqdm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.updates = 0
            bars.append(self)

        def update(self, n=1):
            self.updates += n
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    out = upscale(small_photo, "realesr-animevideov3", backend="ncnn", device="cpu", tile=24,
                  overlap=4, progress=True)
    assert out.size == (192, 160)
    (bar,) = bars
    expected = count_tiles(40, 48, 24, 4)
    assert expected > 1 and bar.updates == expected == bar.n == bar.total


def test_options_are_validated():
    with pytest.raises(InvalidParameterError, match="threads must be a positive integer"):
        load_upscaler("realesr-animevideov3", backend="ncnn", device="cpu", threads=0)
    with pytest.raises(InvalidParameterError, match="not 'mps'"):
        load_upscaler("realesr-animevideov3", backend="ncnn", device="mps")
    with pytest.raises(InvalidParameterError, match="backends torch, not 'ncnn'"):
        upscale(np.zeros((8, 8, 3), np.uint8), "realesrgan-x2plus", backend="ncnn")


def test_speed_switches_keep_output(small_photo):
    base = np.asarray(upscale(small_photo, "realesr-animevideov3", backend="ncnn", device="cpu",
                              progress=False))
    plain = np.asarray(upscale(small_photo, "realesr-animevideov3", backend="ncnn", device="cpu",
                               winograd=False, sgemm=False, packing=False, threads=1,
                               progress=False))
    assert psnr(base, plain) >= 60


class _Info:
    def __init__(self, name, kind):
        self._name, self._type = name, kind

    def device_name(self):
        return self._name

    def type(self):
        return self._type


class _FakeNcnn:
    def __init__(self, *devices):
        self.devices = [_Info(*d) for d in devices]

    def get_gpu_count(self):
        return len(self.devices)

    def get_gpu_info(self, i):
        return self.devices[i]


def test_device_choice_prefers_discrete_over_llvmpipe(caplog):
    fake = _FakeNcnn(("llvmpipe (LLVM 15.0.7, 256 bits)", 3), ("Intel UHD 630", 1),
                     ("NVIDIA Tesla T4", 0))
    with caplog.at_level(logging.INFO, logger=ncnn_backend.__name__):
        dev = ncnn_backend.choose_device(None, None, fake)
    assert (dev.index, dev.name) == (2, "NVIDIA Tesla T4")
    assert "NVIDIA Tesla T4' (discrete)" in caplog.text


def test_device_choice_only_llvmpipe_falls_back_to_cpu(caplog):
    fake = _FakeNcnn(("llvmpipe (LLVM 15.0.7, 256 bits)", 3))
    with caplog.at_level(logging.WARNING, logger=ncnn_backend.__name__):
        assert ncnn_backend.choose_device(None, None, fake) is None
    assert "only Vulkan device 0 'llvmpipe" in caplog.text and "running on the CPU" in caplog.text
    forced = ncnn_backend.choose_device(True, None, fake)
    assert forced.software and forced.index == 0
    with pytest.raises(InvalidParameterError, match="gpu_index=3 but ncnn sees 1"):
        ncnn_backend.choose_device(None, 3, fake)
    with pytest.raises(BackendUnavailableError, match="no Vulkan device"):
        ncnn_backend.choose_device(True, None, _FakeNcnn())
    assert ncnn_backend.choose_device(None, None, _FakeNcnn()) is None


def test_gpu_evictors_run_and_are_logged(caplog):
    seen = []

    def evictor(reason):
        seen.append(reason)
        return "fake diffusion pipeline"

    def idle(reason):
        return False

    def broken(reason):
        raise RuntimeError("boom")

    for fn in (evictor, idle, broken):
        gpu_guard.register_gpu_evictor(fn)
    try:
        with caplog.at_level(logging.WARNING, logger=gpu_guard.__name__):
            assert gpu_guard.evict_gpu_models("ncnn test") == ["fake diffusion pipeline"]
        assert seen == ["ncnn test"]
        assert "moved fake diffusion pipeline off the GPU before ncnn test" in caplog.text
        assert "failed" in caplog.text  # the broken one is reported, not raised
    finally:
        for fn in (evictor, idle, broken):
            gpu_guard.unregister_gpu_evictor(fn)
    assert gpu_guard.evict_gpu_models("again") == [] and seen == ["ncnn test"]


def test_ncnn_gpu_load_evicts_first_cpu_does_not(monkeypatch):
    calls = []
    monkeypatch.setattr(gpu_guard, "evict_gpu_models", lambda reason: calls.append(reason))
    load_upscaler("realesr-animevideov3", backend="ncnn", device="cpu", threads=2)
    assert calls == []

    class Stop(Exception):
        pass

    def stop(reason):
        calls.append(reason)
        raise Stop  # stop before ncnn touches a (fake) Vulkan device

    monkeypatch.setattr(gpu_guard, "evict_gpu_models", stop)
    monkeypatch.setattr(ncnn_backend, "choose_device",
                        lambda *a: ncnn_backend.VulkanDevice(0, "NVIDIA Tesla T4", 0))
    with pytest.raises(Stop):
        load_upscaler("realesr-animevideov3", backend="ncnn", use_gpu=True, threads=3)
    assert calls == ["ncnn Vulkan upscaling on Vulkan device 0 'NVIDIA Tesla T4' (discrete)"]


def test_cli_backend_ncnn(tmp_path, small_photo):
    src = tmp_path / "in.png"
    small_photo.save(src)
    out = tmp_path / "out.png"
    rc = cli_main(["-q", "upscale", str(src), "-o", str(out), "-m", "realesr-animevideov3",
                   "--backend", "ncnn", "--device", "cpu", "-s", "2"])
    assert rc == 0
    with Image.open(out) as im:
        assert im.size == (96, 80)
        assert im.info["upscale_backend"] == "ncnn" and im.info["upscaler"] == "realesr-animevideov3"
