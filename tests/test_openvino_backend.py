"""The OpenVINO backend: fp32 gives torch's pixels, tiles as torch does, exports its IR once per
weights and OpenVINO version, and exports it again when the cached copy is damaged."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import psnr

pytest.importorskip("openvino")

from pipeline_lib.errors import BackendUnavailableError, InvalidParameterError  # noqa: E402
from pipeline_lib.upscale import load_upscaler  # noqa: E402
from pipeline_lib.upscale.backends import openvino_backend as O  # noqa: E402
from pipeline_lib.upscale.backends import torch_backend  # noqa: E402
from pipeline_lib.upscale.registry import MODELS  # noqa: E402
from pipeline_lib.upscale.tiling import run_tiled  # noqa: E402

FAST = "realesr-animevideov3"


def _torch(model: str):
    return load_upscaler(model, device="cpu", backend="torch", dtype="fp32", progress=False)


def _crop(photo, side: int) -> np.ndarray:
    arr = np.asarray(photo.crop((180, 90, 180 + side, 90 + side)), dtype=np.float32) / 255
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


@pytest.mark.parametrize("model", ["realesrgan-x4plus", "realesrgan-x4plus-anime", FAST])
def test_fp32_gives_torchs_pixels(model, photo):
    ov_up = O.load(MODELS[model], dtype="fp32", progress=False)
    assert (ov_up.backend, ov_up.device, ov_up.dtype, ov_up.scale) == ("openvino", "cpu",
                                                                       "float32", 4)
    x = _crop(photo, 28)[None]
    a, b = ov_up.run(x), _torch(model).run(x)
    assert a.shape == b.shape == (1, 3, 112, 112) and a.dtype == np.float32
    to8 = lambda y: np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
    assert psnr(to8(a), to8(b)) >= 60.0
    assert np.abs(a - b).max() < 2e-3


def test_tiled_openvino_equals_tiled_torch(photo):
    ov_up, t_up = O.load(MODELS[FAST], dtype="fp32", progress=False), _torch(FAST)
    img = _crop(photo, 56)[:, :, :44]
    a = run_tiled(ov_up.run, img, 4, tile=24, overlap=8)
    b = run_tiled(t_up.run, img, 4, tile=24, overlap=8)
    assert a.shape == b.shape == (3, 224, 176)
    assert np.abs(a - b).max() < 1e-4


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache for the IR, and the fast model's weights as a local file outside it."""
    weights = Path(_torch(FAST).weights)
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path / "cache"))
    return weights


def test_ir_is_exported_once_and_compiled_models_are_cached(own_cache, monkeypatch):
    first = O.load(own_cache, dtype="fp32")
    folder = Path(first.native.ir)
    assert folder.parent.parent == Path(O.W.cache_dir())
    import openvino

    assert folder == O.ir_folder(own_cache, openvino.__version__)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert list((folder.parent / "compiled").iterdir())  # OpenVINO's compiled-model cache

    def no_export(*a, **k):
        raise AssertionError("exported again although the cached IR is intact")

    monkeypatch.setattr(O, "export_ir", no_export)
    again = O.load(own_cache, dtype="fp32")
    assert again.native.ir == str(folder) and again.native.loaded_from_cache is True
    x = np.random.default_rng(0).random((1, 3, 12, 16), dtype=np.float32)
    assert np.array_equal(first.run(x), again.run(x))


def test_damaged_ir_is_exported_again(own_cache, caplog):
    first = O.load(own_cache, dtype="fp32")
    folder = Path(first.native.ir)
    x = np.random.default_rng(1).random((1, 3, 12, 16), dtype=np.float32)
    want = first.run(x)
    bin_file = folder / "model.bin"
    bin_file.write_bytes(bin_file.read_bytes()[: bin_file.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING):
        fixed = O.load(own_cache, dtype="fp32")
    assert "damaged or incomplete; exporting it again" in caplog.text
    assert np.array_equal(fixed.run(x), want)
    sums = json.loads((folder / "manifest.json").read_text())
    assert sums["model.bin"] == O.W.sha256_file(bin_file)
    (folder / "manifest.json").unlink()  # an export killed before its manifest: also redone
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        O.load(own_cache, dtype="fp32")
    assert "exporting it again" in caplog.text and (folder / "manifest.json").is_file()


def test_precision_follows_the_torch_rule(own_cache, monkeypatch):
    """bf16 by default only where the CPU computes it natively (simulated here)."""
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: True)
    up = O.load(own_cache)
    assert (up.dtype, up.native.precision_hint) == ("bfloat16", "bf16")
    exact = O.load(own_cache, dtype="fp32")
    assert (exact.dtype, exact.native.precision_hint) == ("float32", "f32")
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: False)
    assert O.load(own_cache).native.precision_hint == "f32"


def test_devices_and_options_are_checked():
    assert O.openvino_device(None, ["CPU"]) == "CPU"
    assert O.openvino_device("gpu:1", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1"
    assert O.openvino_device("gpu", ["CPU", "GPU.0"]) == "GPU"
    with pytest.raises(InvalidParameterError, match="runs on 'cpu' or an Intel GPU"):
        O.openvino_device("cuda", ["CPU"])
    with pytest.raises(BackendUnavailableError, match="no device GPU.0; it sees CPU"):
        O.openvino_device("gpu.0", ["CPU"])
    with pytest.raises(InvalidParameterError, match="threads must be a positive integer"):
        O.load(MODELS[FAST], threads=0)
