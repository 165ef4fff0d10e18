"""OpenCV dnn_superres backend: registry, quality vs bicubic, tiling, modes, errors, auto fallback."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, psnr
from pipeline_lib import (BackendUnavailableError, InvalidParameterError, UnknownModelError,
                          WeightsError, unload_upscalers, list_upscalers, load_upscaler, upscale)
from pipeline_lib.upscale.backends import opencv_backend
from pipeline_lib.upscale.registry import MODELS

BUNDLED = [("fsrcnn", s) for s in (2, 3, 4)] + [("fsrcnn-small", s) for s in (2, 3, 4)] + \
          [("espcn", s) for s in (2, 3, 4)] + [("lapsrn", s) for s in (2, 4, 8)]
EDSR = [("edsr", s) for s in (2, 3, 4)]
# Measured on this crop (tests printed them, cv2 5.0): smallest gain lapsrn-x8 +0.57 dB,
# fsrcnn-small-x4 +0.63 dB; most are +1 to +2 dB. 0.3 dB is a clear margin those all clear.
MIN_GAIN_DB = 0.3


@pytest.fixture(scope="module")
def face(photo) -> np.ndarray:
    """192×192 RGB crop with the face and helmet (192 divides by 2, 3, 4 and 8)."""
    return np.asarray(photo.crop((160, 60, 352, 252)))


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma (16..235), the channel SR papers report PSNR on."""
    a = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]


def test_registry_lists_every_opencv_model():
    rows = {r["name"]: r for r in list_upscalers()}
    for fam, s in BUNDLED + EDSR:
        row = rows[f"{fam}-x{s}"]
        assert row["backends"] == ["opencv"] and row["scale"] == s
    assert rows["fsrcnn-x2"]["source"].endswith("data/dnn_superres/FSRCNN_x2.pb")
    assert rows["edsr-x4"]["source"] == \
        "https://github.com/Saafke/EDSR_Tensorflow/raw/master/models/EDSR_x4.pb"
    assert MODELS["edsr-x3"].weights.sha256 == \
        "3baa3740fdb8ee9c52f1a41d69fa74cb9feef0fa9bfeec24f0ee58b928068e9a"


@pytest.mark.parametrize("fam,s", BUNDLED, ids=[f"{f}-x{s}" for f, s in BUNDLED])
def test_beats_bicubic_on_y_channel(face, fam, s):
    h, w = face.shape[:2]
    # non-antialiased cubic shrink: what these models were trained on
    lr = cv2.resize(face, (w // s, h // s), interpolation=cv2.INTER_CUBIC)
    bicubic = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    res = upscale(lr, f"{fam}-x{s}", progress=False, full_result=True)
    assert res.backend == "opencv" and res.model == f"{fam}-x{s}"
    out = res.image
    assert out.shape == face.shape and out.dtype == np.uint8
    b = slice(s, -s)  # the usual border crop: edge pixels lack context for every method
    p_model = psnr(y_channel(out)[b, b], y_channel(face)[b, b])
    p_bicubic = psnr(y_channel(bicubic)[b, b], y_channel(face)[b, b])
    print(f"{fam}-x{s}: Y-PSNR model {p_model:.2f} dB, bicubic {p_bicubic:.2f} dB, "
          f"gain {p_model - p_bicubic:+.2f} dB")
    assert p_model >= p_bicubic + MIN_GAIN_DB


@pytest.mark.parametrize("model", ["espcn-x2", "lapsrn-x4"])
def test_tiled_matches_untiled(face, model):
    lr = face[48:144, 40:136]  # 96², cut into 3×3 tiles of 48 px
    whole = upscale(lr, model, tile=0, progress=False)
    tiled = upscale(lr, model, tile=48, overlap=12, progress=False, full_result=True)
    assert tiled.tile == 48
    value = psnr(tiled.image, whole)
    print(f"{model}: tiled (48/12) vs untiled PSNR {value:.1f} dB")
    assert value >= 45


def test_cached_once_per_process():
    assert load_upscaler("fsrcnn-x2") is load_upscaler("fsrcnn-x2", backend="opencv")


def test_modes_rgba_gray_16bit(small_photo):
    rgb = np.asarray(small_photo)  # 48×40
    h, w = rgb.shape[:2]
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, ramp]), "RGBA")
    out = upscale(rgba, "espcn-x2", progress=False)
    assert out.mode == "RGBA" and out.size == (2 * w, 2 * h)
    assert out.info["upscaler"] == "espcn-x2" and out.info["upscale_backend"] == "opencv"
    alpha = np.asarray(out)[..., 3].astype(np.float64)
    ref_alpha = cv2.resize(ramp, (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
    assert psnr(alpha, ref_alpha) > 35  # a smooth ramp stays a ramp

    gray = small_photo.convert("L")
    g = upscale(gray, "fsrcnn-x3", progress=False)
    assert g.mode == "L" and g.size == (3 * w, 3 * h)
    ref_g = gray.resize((3 * w, 3 * h), Image.BICUBIC)
    assert psnr(np.asarray(g), np.asarray(ref_g)) > 25

    deep = rgb.astype(np.uint16) * 257
    d = upscale(deep, "fsrcnn-x2", progress=False)
    assert d.dtype == np.uint16 and d.shape == (2 * h, 2 * w, 3)
    d8 = upscale(rgb, "fsrcnn-x2", progress=False)
    # 16-bit in gives the 8-bit result at 16-bit scale (the model itself runs on 8-bit input)
    assert np.abs(d.astype(np.int64) / 257 - d8).max() <= 1.01


def test_scale_and_size_semantics(small_photo, capsys):
    w, h = small_photo.size
    r = upscale(small_photo, "fsrcnn-x2", scale=3.5, progress=False, full_result=True)
    assert r.image.size == (round(w * 3.5), round(h * 3.5)) and r.scale == pytest.approx(3.5)
    r = upscale(small_photo, "lapsrn-x8", size=100, progress=False)
    assert r.size == (100, round(h * 100 / w))
    r = upscale(small_photo, "espcn-x3", size=(90, 90), progress=False)
    assert r.size == (90, 90)
    upscale(small_photo, "espcn-x2", tile=16, overlap=4, progress=True)
    assert "upscale espcn-x2" in capsys.readouterr().err  # the tqdm bar ran


def test_unknown_scale_lists_existing_scales():
    with pytest.raises(UnknownModelError, match=r"espcn exists only at scales x2, x3, x4"):
        upscale(np.zeros((8, 8, 3), np.uint8), "espcn-x8", progress=False)
    with pytest.raises(UnknownModelError, match=r"lapsrn exists only at scales x2, x4, x8"):
        load_upscaler("lapsrn-x3")


def test_missing_contrib_module_says_what_to_install(monkeypatch):
    monkeypatch.delattr(cv2, "dnn_superres")
    unload_upscalers()
    with pytest.raises(BackendUnavailableError,
                       match=r"without the contrib modules.*Fix: pip install --force-reinstall "
                             r"--no-deps 'opencv-contrib-python-headless<5' — then restart"):
        upscale(np.zeros((8, 8, 3), np.uint8), "fsrcnn-x2", progress=False)


@pytest.mark.parametrize("shell", ["no_version", "no_dnn"])
def test_half_deleted_cv2_is_named_with_the_repair_command(monkeypatch, shell):
    """`pip uninstall opencv-python` on Colab's three packages leaves a cv2 without __version__
    (or without its compiled parts): name that state and the command that repairs it, instead of
    an AttributeError."""
    import types

    broken = types.ModuleType("cv2")
    if shell == "no_dnn":
        broken.__version__ = "4.13.0"
    monkeypatch.setitem(sys.modules, "cv2", broken)
    unload_upscalers()
    with pytest.raises(BackendUnavailableError,
                       match=r"cv2 package is incomplete \(half deleted.*Fix: pip install "
                             r"--force-reinstall --no-deps 'opencv-contrib-python-headless<5'"):
        upscale(np.zeros((8, 8, 3), np.uint8), "fsrcnn-x2", progress=False)


def test_missing_opencv_says_the_same_repair(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 → ImportError
    unload_upscalers()
    with pytest.raises(BackendUnavailableError,
                       match=r"needs OpenCV with contrib modules.*Fix: pip install "
                             r"--force-reinstall --no-deps 'opencv-contrib-python-headless<5'"):
        upscale(np.zeros((8, 8, 3), np.uint8), "fsrcnn-x2", progress=False)


def test_opencv_without_tensorflow_importer_says_what_to_install(monkeypatch):
    """OpenCV 5.1 has dnn_superres but no TensorFlow importer, so no .pb model loads: say so,
    instead of calling the (intact) model file damaged."""
    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow", raising=False)
    unload_upscalers()
    with pytest.raises(BackendUnavailableError,
                       match=r"no TensorFlow \(\.pb\) importer \(OpenCV 5\.1 removed it\)\. "
                             r"Fix: pip install --force-reinstall --no-deps "
                             r"'opencv-contrib-python-headless<5'"):
        upscale(np.zeros((8, 8, 3), np.uint8), "fsrcnn-x2", progress=False)


def test_corrupt_bundled_model_is_refused(tmp_path, monkeypatch):
    data = tmp_path / "dnn_superres"
    shutil.copytree(opencv_backend.BUNDLED_DIR, data)
    pb = data / "FSRCNN_x2.pb"
    raw = bytearray(pb.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pb.write_bytes(bytes(raw))
    monkeypatch.setattr(opencv_backend, "BUNDLED_DIR", data)
    unload_upscalers()
    with pytest.raises(WeightsError, match=r"FSRCNN_x2\.pb is corrupt: sha256 [0-9a-f]{64}, "
                                           r"expected 366b33f0.*Reinstall pipeline_lib"):
        upscale(np.zeros((8, 8, 3), np.uint8), "fsrcnn-x2", progress=False)
    unload_upscalers()


def test_local_pb_files(tmp_path):
    good = tmp_path / "ESPCN_x3.pb"
    shutil.copy(opencv_backend.BUNDLED_DIR / "ESPCN_x3.pb", good)
    r = upscale(np.zeros((10, 12, 3), np.uint8), str(good), progress=False, full_result=True)
    assert r.backend == "opencv" and r.image.shape == (30, 36, 3)
    junk = tmp_path / "FSRCNN_x2.pb"
    junk.write_bytes(b"not a tensorflow graph" * 10)
    with pytest.raises(WeightsError, match=r"FSRCNN_x2\.pb: OpenCV cannot read this model"):
        upscale(np.zeros((8, 8, 3), np.uint8), str(junk), progress=False)
    odd = tmp_path / "my_model.pb"
    odd.write_bytes(good.read_bytes())
    with pytest.raises(InvalidParameterError, match=r"named like the official ones"):
        upscale(np.zeros((8, 8, 3), np.uint8), str(odd), progress=False)


def test_edsr_offline_error_names_url_cache_path_and_sha(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    for backend in ("auto", "opencv"):
        with pytest.raises(WeightsError) as err:
            upscale(np.zeros((8, 8, 3), np.uint8), "edsr-x4", backend=backend, progress=False)
        msg = str(err.value)
        assert "https://github.com/Saafke/EDSR_Tensorflow/raw/master/models/EDSR_x4.pb" in msg
        assert str(tmp_path / "weights" / "EDSR_x4.pb") in msg
        assert "dd35ce3cae53ecee2d16045e08a932c3e7242d641bb65cb971d123e06904347f" in msg


def test_cuda_dnn_backend_chosen_when_opencv_reports_a_device(monkeypatch, caplog):
    monkeypatch.setattr(cv2.cuda, "getCudaEnabledDeviceCount", lambda: 1)
    caplog.set_level(logging.INFO, "pipeline_lib")
    up = opencv_backend.load(MODELS["fsrcnn-x2"])
    assert up.device == "cuda" and "DNN_BACKEND_CUDA" in caplog.text
    assert opencv_backend.load(MODELS["fsrcnn-x2"], device="cpu").device == "cpu"


def test_auto_falls_back_when_weights_are_unavailable(tmp_path, monkeypatch, caplog):
    # realesrgan-x2plus has no offline copy: offline with an empty cache, torch cannot load it
    # and EDSR-x2 is not cached either, so auto must end on the bundled ESPCN x2.
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    caplog.set_level(logging.INFO, "pipeline_lib")
    img = Image.new("RGB", (20, 14), (120, 80, 40))
    res = upscale(img, "realesrgan-x2plus", progress=False, full_result=True, fallback=True)
    assert (res.model, res.backend, res.image.size) == ("espcn-x2", "opencv", (40, 28))
    assert res.image.info["upscaler"] == "espcn-x2"
    assert "realesrgan-x2plus on torch" in res.fallback and "edsr-x2 on opencv" in res.fallback
    assert res.image.info["upscale_fallback"] == res.fallback
    lines = [r.getMessage() for r in caplog.records if "upscaler auto" in r.getMessage()]
    assert len(lines) == 1 and "using espcn-x2 on opencv instead of realesrgan-x2plus" in lines[0]


def test_a_named_model_is_never_swapped(tmp_path, monkeypatch):
    """Offline with an empty cache, realesrgan-x2plus cannot load: without fallback=True that is
    an error naming the file, its URL, its sha256 and where to put it — not an ESPCN picture."""
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    spec = MODELS["realesrgan-x2plus"]
    with pytest.raises(WeightsError) as err:
        upscale(Image.new("RGB", (20, 14)), "realesrgan-x2plus", progress=False)
    msg = str(err.value)
    assert spec.weights.url in msg and spec.weights.sha256 in msg and "fallback=True" in msg
    assert str(tmp_path / "weights" / spec.weights.filename) in msg
    assert not list(tmp_path.rglob("*.part"))


def test_auto_without_torch_uses_opencv(tmp_path):
    """torch import fails (sys.modules['torch'] = None) and there is no network: upscale() still
    returns the right size through OpenCV and says so in its result, its .info and its log."""
    code = textwrap.dedent("""
        import logging, sys
        sys.modules["torch"] = None  # every `import torch` now raises ImportError
        # Real-ESRGAN on ncnn (where that backend is installed) comes before EDSR in the chain;
        # block it too so this test sees the OpenCV end of the chain.
        sys.modules["ncnn"] = None
        logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
        from PIL import Image
        from pipeline_lib import upscale
        res = upscale(Image.new("RGB", (40, 30), (10, 200, 30)), progress=False, full_result=True)
        print("RESULT", res.model, res.backend, res.image.size, res.image.info["upscale_backend"])
        half = upscale(Image.new("RGB", (40, 30)), "realesr-animevideov3-x2", progress=False,
                       fallback=True)
        print("RESULT2", half.info["upscaler"], half.size)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_LIB_OFFLINE": "1",
           "HF_HUB_OFFLINE": "1", "PIPELINE_LIB_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT espcn-x4 opencv (160, 120) opencv" in proc.stdout
    assert "RESULT2 espcn-x2 (80, 60)" in proc.stdout
    auto = [ln for ln in proc.stderr.splitlines() if "upscaler auto" in ln]
    assert len(auto) == 2, proc.stderr
    assert "using espcn-x4 on opencv instead of realesrgan-x4plus" in auto[0]
    assert "realesrgan-x4plus on torch: backend 'torch' cannot be used" in auto[0]
    assert "edsr-x4 on opencv" in auto[0]  # EDSR was tried before the bundled models


def test_cli_runs_an_opencv_model_and_records_it(tmp_path, small_photo):
    from pipeline_lib.cli import main

    src, dest = tmp_path / "in.png", tmp_path / "out.png"
    small_photo.save(src)
    assert main(["upscale", str(src), "-o", str(dest), "-m", "espcn-x3", "--backend", "opencv"]) == 0
    with Image.open(dest) as im:
        assert im.size == (3 * small_photo.width, 3 * small_photo.height)
        assert im.text["upscaler"] == "espcn-x3" and im.text["upscale_backend"] == "opencv"
        ref = upscale(small_photo, "espcn-x3", progress=False)
        assert psnr(np.asarray(im), np.asarray(ref)) == float("inf")
