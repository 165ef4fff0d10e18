"""Hardening (issue 10) for upscaling: bad inputs through upscale()/CLI/HTTP, damaged or wrong
weights, cache races, killed runs, out-of-memory, parameter validation, property tests.

Every bad-input case from tests/bad_inputs.py goes through all three front ends and must give a
correct image or a typed error naming the file; sources stay byte-identical and no partial output
is left. Uses the compact realesr-animevideov3 on images of at most 112×112.
"""
from __future__ import annotations

import base64
import hashlib
import io
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bad_inputs import SCALE, _gradient, write_corpus
from conftest import ROOT
from pipeline_lib import (ImageReadError, ImageTooLargeError, InvalidParameterError,
                          TileOutOfMemoryError, WeightsError, load_upscaler, upscale)
from pipeline_lib import cli
from pipeline_lib.images import read_image, save_image
from pipeline_lib.server import ServerLimits, create_app
from pipeline_lib.upscale import weights
from pipeline_lib.upscale.registry import MODELS
from pipeline_lib.upscale.tiling import run_with_backoff

FAST = "realesr-animevideov3"
ERRORS = {"read": ImageReadError, "too_large": ImageTooLargeError}
with tempfile.TemporaryDirectory() as _d:
    NAMES = sorted(write_corpus(_d))


@pytest.fixture(autouse=True)
def _no_hang():
    """Fail (not hang) any in-process test that runs past 120 s."""
    def boom(*_):
        raise TimeoutError("test exceeded 120 s: something hangs")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    cases = write_corpus(folder)
    return folder, cases, {n: _sha(folder / n) for n in cases}


_CHANNELS = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1, "I;16": 1, "numpy16": 3}


def _check_image(out, case, src: Path) -> None:
    """Right size, orientation, channels/depth, alpha kept, and content close to the source."""
    arr, _ = read_image(out)
    w, h = case.size
    assert arr.shape[:2] == (h, w), (case.name, arr.shape)
    assert arr.shape[2] == _CHANNELS[case.mode], (case.name, arr.shape)
    assert arr.dtype == (np.uint16 if case.mode in ("I;16", "numpy16") else np.uint8)
    if case.alpha:
        a = arr[..., -1]
        assert a.min() < 50 and a.max() > 200, f"{case.name}: alpha lost ({a.min()}..{a.max()})"
    ref, _ = read_image(src)  # decoded and EXIF-rotated like the front ends do
    small = cv2.resize(arr, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA)
    small = small.reshape(ref.shape).astype(np.float64)
    peak = 65535.0 if arr.dtype == np.uint16 else 255.0
    c = 1 if ref.shape[2] <= 2 else 3
    # compared after a 5×5 box blur: a dithered 1-bit input comes back smooth, rightly
    blur = lambda a: cv2.blur(np.ascontiguousarray(a[..., :c]), (5, 5)).reshape(a.shape[:2] + (c,))  # noqa: E731
    diff = np.abs(blur(small) - blur(ref.astype(np.float64))).mean() / peak
    assert diff < 0.08, f"{case.name}: output does not look like the input ({diff:.3f})"
    if case.name == "exif_rotated.jpg":  # displayed = stored card turned 90° clockwise
        card = np.rot90(_gradient(24, 16), k=-1).astype(np.float64)
        assert np.abs(small - card).mean() < 12
        assert np.abs(small - np.rot90(_gradient(24, 16), k=1)).mean() > 40


# ------------------------------------------------------------------ bad inputs: upscale()
@pytest.mark.parametrize("name", NAMES)
def test_corpus_through_upscale(corpus, name):
    folder, cases, hashes = corpus
    case, path = cases[name], folder / name
    if case.error:
        with pytest.raises(ERRORS[case.error], match=case.match) as err:
            upscale(path, FAST, scale=SCALE, device="cpu", progress=False)
        assert name in str(err.value)
    else:
        out = upscale(path, FAST, scale=SCALE, device="cpu", progress=False)
        if case.mode == "numpy16":
            assert isinstance(out, np.ndarray) and out.dtype == np.uint16
        else:
            assert out.mode == case.mode
        _check_image(out, case, path)
    assert _sha(path) == hashes[name], "the source file changed"


def test_pixel_limit_is_configurable(corpus, monkeypatch):
    folder, _, _ = corpus
    monkeypatch.setenv("PIPELINE_LIB_MAX_INPUT_PIXELS", "300")  # the 24×16 card has 384
    with pytest.raises(ImageTooLargeError, match="384 pixels exceeds the limit of 300"):
        upscale(folder / "cmyk.jpg", FAST, device="cpu", progress=False)
    monkeypatch.setenv("PIPELINE_LIB_MAX_INPUT_PIXELS", "lots")
    with pytest.raises(InvalidParameterError, match="PIPELINE_LIB_MAX_INPUT_PIXELS='lots' is not a "
                                                    "positive integer"):
        read_image(folder / "cmyk.jpg")
    with pytest.raises(InvalidParameterError, match="max_pixels must be a positive integer"):
        read_image(folder / "cmyk.jpg", max_pixels=0)


# ------------------------------------------------------------------ bad inputs: CLI
def _cli(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "pipeline_lib", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_corpus_through_cli(corpus, tmp_path):
    folder, cases, hashes = corpus
    out = tmp_path / "out"
    r = _cli("upscale", *(folder / n for n in NAMES), "-o", out, "--model", FAST,
             "--scale", SCALE, "--device", "cpu")
    assert r.returncode == 1, r.stderr  # some inputs fail, the run finishes
    good = [c for c in cases.values() if not c.error]
    # upscale() refuses animations as stills, but the CLI upscales them frame by frame
    animated = {"animated.gif": "animated_upscaled.gif",
                "animated_apng.png": "animated_apng_upscaled.png"}
    bad = [c for c in cases.values() if c.error and c.name not in animated]
    assert f"{len(good) + len(animated)} upscaled, 0 skipped, {len(bad)} failed" in r.stdout
    for src_name, out_name in animated.items():
        with Image.open(folder / src_name) as src, Image.open(out / out_name) as got:
            assert got.n_frames == src.n_frames >= 2
            assert got.size == (round(src.width * float(SCALE)), round(src.height * float(SCALE)))
    for case in bad:
        # progress bars share stderr, so a failure line may not start at a line start
        m = re.search(re.escape(f"{folder / case.name}: failed: ") + "(.*)", r.stderr)
        assert m, f"{case.name}: no failure line in\n{r.stderr}"
        assert re.search(case.match, m[1]) and case.name in m[1], m[1]
    expected = {f"{Path(c.name).stem}_upscaled.png" for c in good} | set(animated.values())
    assert {p.name for p in out.iterdir()} == expected  # nothing partial, hidden or extra
    for case in good:
        _check_image(out / f"{Path(case.name).stem}_upscaled.png", case, folder / case.name)
    assert {n: _sha(folder / n) for n in NAMES} == hashes


# ------------------------------------------------------------------ bad inputs: HTTP
@pytest.fixture(scope="module")
def client():
    limits = ServerLimits(max_input_pixels=100_000, max_output_pixels=400_000)
    with TestClient(create_app(FAST, device="cpu", limits=limits)) as c:
        deadline = time.monotonic() + 120
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "model did not load"
            time.sleep(0.05)
        yield c


def _post(client, data: bytes, name: str = "in.png", **fields):
    return client.post("/v1/images/upscale", files={"image": (name, data, "image/png")},
                       data=fields)


@pytest.mark.parametrize("name", NAMES)
def test_corpus_through_http(corpus, client, name, tmp_path):
    folder, cases, hashes = corpus
    case, path = cases[name], folder / name
    r = _post(client, path.read_bytes(), name, scale=str(SCALE))
    if case.error:
        status, type_ = {"read": (400, "invalid_image"), "too_large": (413, "image_too_large")}[case.error]
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["type"] == type_ and name in err["message"]
        assert re.search(case.match, err["message"]), err["message"]
        assert "pipeline_lib_upload" not in err["message"]
    else:
        assert r.status_code == 200, r.text
        png = tmp_path / "answer.png"
        png.write_bytes(base64.b64decode(r.json()["data"][0]["b64_json"]))
        if case.mode != "numpy16":
            assert Image.open(png).mode == case.mode
        _check_image(png, case, path)
    assert _sha(path) == hashes[name]


# ------------------------------------------------------------------ weights and caches
def test_corrupt_pinned_download_in_cache_is_detected_offline(tmp_path, monkeypatch, small_photo):
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    spec = MODELS["realesr-general-x4v3"]
    bad = tmp_path / "weights" / spec.weights.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x50\x4b\x03\x04" + os.urandom(2000))  # a truncated 'zip'
    before = _sha(bad)
    with pytest.raises(WeightsError) as err:
        load_upscaler(spec.name, device="cpu", backend="torch")
    msg = str(err.value)
    assert f"the cache entry {bad} failed its sha256 checksum" in msg
    assert spec.weights.sha256 in msg and before in msg and "not used" in msg
    assert "Delete it" in msg and "PIPELINE_LIB_OFFLINE" in msg and spec.weights.url in msg
    assert _sha(bad) == before
    # auto falls back to another model and says why; the damaged file is still not used
    with pytest.raises(WeightsError, match="failed its sha256 checksum"):  # named: never swapped
        upscale(small_photo.crop((0, 0, 12, 10)), spec.name, device="cpu", progress=False)
    res = upscale(small_photo.crop((0, 0, 12, 10)), spec.name, device="cpu", progress=False,
                  full_result=True, fallback=True)
    assert res.model != spec.name and "failed its sha256 checksum" in res.fallback


def _torch_file(path: Path, obj) -> Path:
    torch.save(obj, str(path))
    return path


@pytest.mark.parametrize("kind, match", [
    ("random_tensors", "not an upscaler architecture"),
    ("sd_checkpoint", "Stable Diffusion checkpoint"),
    ("text_safetensors", "cannot read weights"),
    ("empty_pth", "cannot read weights"),
    ("truncated_pth", "cannot read weights"),
    ("onnx", "unsupported weight file type"),
])
def test_wrong_files_as_models(tmp_path, kind, match):
    if kind == "random_tensors":
        path = _torch_file(tmp_path / "random.pth", {"a.weight": torch.randn(8, 3, 3, 3),
                                                    "b.bias": torch.randn(8)})
    elif kind == "sd_checkpoint":
        path = _torch_file(tmp_path / "sd.ckpt", {"state_dict": {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}})
    elif kind == "text_safetensors":
        path = tmp_path / "model.safetensors"
        path.write_text("this is not a model\n")
    elif kind == "empty_pth":
        path = tmp_path / "empty.pth"
        path.write_bytes(b"")
    elif kind == "truncated_pth":
        full = _torch_file(tmp_path / "full.pth", {"w": torch.randn(64, 64)}).read_bytes()
        path = tmp_path / "truncated.pth"
        path.write_bytes(full[: len(full) // 2])
    else:
        path = tmp_path / "model.onnx"
        path.write_bytes(b"\x08\x07")
    with pytest.raises(WeightsError, match=match) as err:
        upscale(np.zeros((8, 8, 3), np.uint8), str(path), device="cpu", progress=False)
    assert str(path) in str(err.value)


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.path, "w"))


def test_torch_saved_pickle_with_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _torch_file(tmp_path / "evil.pth", {"w": torch.zeros(2), "x": _Marker(str(marker))})
    with pytest.raises(WeightsError, match="refusing to load"):
        upscale(np.zeros((8, 8, 3), np.uint8), str(path), device="cpu", progress=False)
    assert not marker.exists()


def _convert_in_child(cache: str, start_at: float) -> str:
    os.environ["PIPELINE_LIB_CACHE"] = cache
    from pipeline_lib.upscale import weights as w
    from pipeline_lib.upscale.registry import MODELS as models

    time.sleep(max(0.0, start_at - time.time()))  # all children start converting together
    path = w.converted_from_ncnn(models[FAST])
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_concurrent_processes_fill_the_converted_cache_safely(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 3.0
    with ctx.Pool(3) as pool:
        digests = pool.starmap(_convert_in_child, [(str(tmp_path), start)] * 3, chunksize=1)
    dest = tmp_path / "converted" / f"{MODELS[FAST].ncnn_stem}.safetensors"
    assert len(set(digests)) == 1 and digests[0] == _sha(dest)
    assert (dest.parent / (dest.name + ".sha256")).read_text().strip() == digests[0]
    assert not list(dest.parent.glob("*.part")) and not list(dest.parent.glob(".*.part"))


def test_truncated_converted_cache_without_sidecar_is_rebuilt(tmp_path, monkeypatch):
    # a process killed between writing the file and its .sha256 leaves an unverifiable entry
    monkeypatch.setenv("PIPELINE_LIB_CACHE", str(tmp_path))
    dest = weights.converted_from_ncnn(MODELS[FAST])
    good = dest.read_bytes()
    dest.write_bytes(good[:100])
    (dest.parent / (dest.name + ".sha256")).unlink()
    assert weights.converted_from_ncnn(MODELS[FAST]).read_bytes() == good


# ------------------------------------------------------------------ interrupted work
def test_killed_cli_leaves_no_partial_files_and_rerun_resumes(tmp_path, photo):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        photo.crop((50 * i, 60, 50 * i + 112, 172)).save(src / f"img{i}.png")
    hashes = {p.name: _sha(p) for p in src.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "pipeline_lib", "upscale", str(src), "-o", str(out),
            "--model", FAST, "--scale", "4", "--device", "cpu"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    try:
        while not (out.is_dir() and list(out.glob("img*_upscaled.png"))):
            assert proc.poll() is None, "the run ended before the first output appeared"
            assert time.monotonic() < deadline, "no output after 180 s"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finished = sorted(out.glob("img*_upscaled.png"))
    assert 1 <= len(finished) < 6, "kill landed too late to test anything"
    for f in finished:  # every visible output is a complete image
        assert Image.open(f).size == (448, 448)
        Image.open(f).load()
    r = _cli("upscale", src, "-o", out, "--model", FAST, "--scale", 4, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"{6 - len(finished)} upscaled, {len(finished)} skipped, 0 failed" in r.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"img{i}_upscaled.png" for i in range(6)], names  # no .part left
    for f in out.iterdir():
        with Image.open(f) as im:
            im.load()
            assert im.size == (448, 448)
    assert {p.name: _sha(p) for p in src.iterdir()} == hashes


def test_stale_temp_file_of_a_dead_writer_is_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.png.{dead.pid}.abc123.part"
    stale.write_bytes(b"half a png")
    live = tmp_path / f".x.png.{os.getpid()}.def456.part"  # a writer still running: kept
    live.write_bytes(b"in progress")
    save_image(Image.new("RGB", (4, 4)), tmp_path / "x.png")
    assert not stale.exists() and live.exists()
    assert Image.open(tmp_path / "x.png").size == (4, 4)


def test_two_inputs_with_one_output_name_do_not_silently_skip(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.new("RGB", (8, 8), "red" if sub == "a" else "blue").save(tmp_path / sub / "x.png")
    out = tmp_path / "out"
    rc = cli.main(["upscale", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"),
                   "-o", str(out), "--model", FAST, "--scale", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "is also the output of" in err and str(tmp_path / "b" / "x.png") in err
    assert np.asarray(Image.open(out / "x_upscaled.png"))[..., 0].mean() > 200  # a's, not b's


# ------------------------------------------------------------------ out of memory
@pytest.fixture
def oom_on_bright(monkeypatch):
    """Make the cached CPU upscaler run out of memory on every tile of a bright image."""
    up = load_upscaler(FAST, device="cpu")
    module = up.native
    real = module.forward

    def forward(x):
        if float(x.mean()) > 0.5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x)

    monkeypatch.setattr(module, "forward", forward)
    return forward


def test_oom_error_names_the_settings_to_change(oom_on_bright):
    with pytest.raises(TileOutOfMemoryError) as err:
        upscale(np.full((40, 40, 3), 230, np.uint8), FAST, device="cpu", progress=False)
    msg = str(err.value)
    assert "smaller tile=" in msg and "--tile" in msg and "device='cpu'" in msg
    out = upscale(np.full((40, 40, 3), 20, np.uint8), FAST, device="cpu", progress=False)
    assert out.shape == (160, 160, 3)  # the next job still runs


def test_cpu_allocator_failure_also_backs_off(monkeypatch):
    up = load_upscaler(FAST, device="cpu")
    module = up.native
    real = module.forward

    def forward(x):
        if x.shape[-1] > 24:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not "
                               "enough memory: you tried to allocate 123456789 bytes.")
        return real(x)

    monkeypatch.setattr(module, "forward", forward)
    res = upscale(np.full((40, 40, 3), 90, np.uint8), FAST, tile=40, overlap=4, device="cpu",
                  progress=False, full_result=True)
    assert res.tile <= 24 and res.image.shape == (160, 160, 3)


def test_cli_reports_oom_and_continues(oom_on_bright, tmp_path, capsys):
    Image.new("RGB", (24, 24), (240, 240, 240)).save(tmp_path / "bright.png")
    Image.new("RGB", (24, 24), (20, 20, 20)).save(tmp_path / "dark.png")
    out = tmp_path / "out"
    rc = cli.main(["upscale", str(tmp_path / "bright.png"), str(tmp_path / "dark.png"),
                   "-o", str(out), "--model", FAST, "--scale", "2", "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1 and "bright.png: failed: out of memory" in cap.err and "--tile" in cap.err
    assert "1 upscaled, 0 skipped, 1 failed" in cap.out
    assert sorted(p.name for p in out.iterdir()) == ["dark_upscaled.png"]


def test_cli_survives_memory_error_and_unexpected_errors(tmp_path, capsys, monkeypatch):
    up_mod = sys.modules["pipeline_lib.media"]  # where upscale_files runs every file

    real = up_mod.upscale
    failures = iter([MemoryError(), RuntimeError("cuDNN exploded")])

    def flaky(src, *a, **kw):
        if Path(src).stem != "c":
            raise next(failures)
        return real(src, *a, **kw)

    monkeypatch.setattr(up_mod, "upscale", flaky)
    for n in "abc":
        Image.new("RGB", (8, 8)).save(tmp_path / f"{n}.png")
    out = tmp_path / "out"
    rc = cli.main(["upscale", *(str(tmp_path / f"{n}.png") for n in "abc"), "-o", str(out),
                   "--model", FAST, "--device", "cpu"])
    cap = capsys.readouterr()
    assert rc == 1 and "a.png: failed: out of memory; use a smaller --scale/--size" in cap.err
    assert "b.png: failed: unexpected RuntimeError: cuDNN exploded" in cap.err
    assert (out / "c_upscaled.png").is_file()


def test_http_reports_oom_as_503_and_keeps_serving(client, oom_on_bright):
    bright = io.BytesIO()
    Image.new("RGB", (16, 16), (240, 240, 240)).save(bright, "PNG")
    r = _post(client, bright.getvalue(), scale="2")
    assert r.status_code == 503 and r.json()["error"]["type"] == "out_of_memory"
    assert "tile" in r.json()["error"]["message"]
    dark = io.BytesIO()
    Image.new("RGB", (16, 16), (20, 20, 20)).save(dark, "PNG")
    assert _post(client, dark.getvalue(), scale="2").status_code == 200


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("kwargs, match", [
    ({"scale": float("inf")}, r"finite number in \(0, 32\]"),
    ({"scale": 33}, r"finite number in \(0, 32\]"),
    ({"scale": 1e308}, r"finite number in \(0, 32\]"),
    ({"scale": True}, r"scale must be a number in \(0, 32\]"),
    ({"scale": np.bool_(True)}, "scale must be a number"),
    ({"scale": "2"}, "scale must be a number"),
    ({"scale": None, "size": np.True_}, "size must be an int"),
    ({"size": 100.0}, "size must be an int"),
    ({"size": np.float64(100)}, "size must be an int"),
    ({"size": np.array([100, 80])}, "size values must be integers ≥ 1"),
    ({"size": (0, 10)}, "≥ 1"),
    ({"size": (True, 10)}, "integers ≥ 1"),
    ({"size": (np.float32(50), 40)}, "integers ≥ 1"),
    ({"size": "0x100"}, "positive integers"),
    ({"size": (20000, 20000)}, "exceeds the limit"),
    ({"tile": "256"}, "tile must be an integer ≥ 0"),
    ({"tile": 256.0}, "tile must be an integer ≥ 0"),
    ({"overlap": -1}, "overlap must be an integer ≥ 0"),
    ({"overlap": "8"}, "overlap must be an integer ≥ 0"),
    ({"tile": 16, "overlap": 8}, "less than half the tile"),
    ({"dtype": torch.int8}, "unsupported dtype"),
    ({"dtype": "float64"}, "unknown dtype"),
    ({"device": 7}, "unknown device"),
    ({"device": "gpu"}, "unknown device"),
    ({"device": "cuda:-1"}, "unknown device"),
    ({"backend": "vulkan"}, "unknown backend 'vulkan'; choose one of auto, torch, opencv, ncnn"),
    ({"backend": None}, "unknown backend"),
    ({"backend": "opencv"}, "runs on backends torch, ncnn, not 'opencv'"),
    ({"sharpen": 1}, "takes no options"),
])
def test_more_bad_parameters_are_explained(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        upscale(np.zeros((12, 10, 3), np.uint8), FAST, progress=False, **kwargs)


def test_stretched_size_cannot_explode_the_working_canvas():
    # ×4096 on one side means 6 passes of a ×4 model on both: refused before any inference
    with pytest.raises(InvalidParameterError, match="working canvas"):
        upscale(np.zeros((64, 1, 3), np.uint8), FAST, size=(4096, 64), device="cpu",
                progress=False)


def test_numpy_numbers_are_accepted():
    arr = np.zeros((6, 8, 3), np.uint8)
    assert upscale(arr, FAST, scale=np.float32(1.5), progress=False).shape == (9, 12, 3)
    assert upscale(arr, FAST, size=np.int64(16), progress=False).shape == (12, 16, 3)
    assert upscale(arr, FAST, size=(np.int32(10), np.int64(7)), tile=np.int64(0),
                   progress=False).shape == (7, 10, 3)


def test_output_pixel_limit_env_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("PIPELINE_LIB_MAX_OUTPUT_PIXELS", "16k")
    with pytest.raises(InvalidParameterError, match="PIPELINE_LIB_MAX_OUTPUT_PIXELS='16k'"):
        upscale(np.zeros((4, 4, 3), np.uint8), FAST, progress=False)


@pytest.mark.parametrize("image, kwargs, dest, match", [
    ([[0, 1]], {}, "x.png", "PIL image or a numpy array"),
    (Image.new("P", (4, 4)), {}, "x.jpg", "cannot save a P image as JPEG"),
    (Image.new("RGB", (4, 4)), {"metadata": ["a"]}, "x.png", "dict of str"),
    (Image.new("RGB", (4, 4)), {"metadata": {"": "x"}}, "x.png", "not a PNG keyword"),
    (Image.new("RGB", (4, 4)), {"metadata": {"k" * 80: "x"}}, "x.png", "1-79 Latin-1"),
    (np.zeros((4, 4, 3), np.uint16), {"metadata": {"参数": "x"}}, "x.png", "not a PNG keyword"),
    (np.zeros((4, 4, 3), np.uint16), {}, "x.webp", "16-bit colour"),
])
def test_save_image_validates_and_writes_nothing(tmp_path, image, kwargs, dest, match):
    with pytest.raises(InvalidParameterError, match=match):
        save_image(image, tmp_path / dest, **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, match", [
    (["--tile", "-1"], "tile must be an integer ≥ 0"),
    (["--tile", "64", "--overlap", "40"], "less than half"),
    (["--dtype", "fp8"], "unknown dtype"),
    (["--backend", "vulkan"], "unknown backend 'vulkan'"),
    (["--device", "cuda:7"], "cuda"),
    (["--scale", "nan"], "scale must be a finite number"),
    (["--scale", "inf"], "scale must be a finite number"),
    (["--size", "0"], "positive integers|≥ 1"),
    (["--size", "10x-3"], "positive integers"),
])
def test_cli_flags_are_checked_once_before_any_file(tmp_path, capsys, flags, match):
    for n in "ab":
        Image.new("RGB", (8, 8)).save(tmp_path / f"{n}.png")
    out = tmp_path / "out"
    rc = cli.main(["upscale", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                   "--model", FAST, *flags])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(match, err) and err.count("error:") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("kwargs, match", [
    ({"tile": -1}, "tile must be an integer ≥ 0"),
    ({"tile": 32, "overlap": 16}, "less than half"),
    ({"device": "cuda:7"}, "cuda"),
    ({"dtype": "fp8"}, "unknown dtype"),
    ({"backend": "vulkan"}, "unknown backend"),
])
def test_server_settings_fail_at_create_app(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        create_app(FAST, **kwargs)


@pytest.mark.parametrize("fields, match", [
    ({"scale": "nan"}, "scale must be a finite number"),
    ({"scale": "inf"}, "scale must be a finite number"),
    ({"scale": "-2"}, "scale must be a finite number"),
    ({"scale": "100"}, "scale must be a finite number"),
    ({"size": "0"}, "'N' or 'WxH'"),
    ({"size": "16x0"}, "'N' or 'WxH'"),
    ({"scale": "two"}, "scale: Input should be a valid number"),
])
def test_server_request_fields(client, fields, match):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    r = _post(client, buf.getvalue(), **fields)
    assert r.status_code == 422 and match in r.json()["error"]["message"], r.text


# ------------------------------------------------------------------ property-based
@settings(max_examples=12, deadline=None)
@given(w=st.integers(1, 24), h=st.integers(1, 24),
       size=st.one_of(st.integers(1, 64), st.tuples(st.integers(1, 64), st.integers(1, 64))),
       as_text=st.booleans())
def test_size_argument_gives_exact_output(w, h, size, as_text):
    arr = np.full((h, w, 3), 120, np.uint8)
    arg = (f"{size[0]}x{size[1]}" if isinstance(size, tuple) else str(size)) if as_text else size
    out = upscale(arr, FAST, size=arg, progress=False)
    if isinstance(size, tuple):
        expected = size
    elif w >= h:
        expected = (size, max(1, round(h * size / w)))
    else:
        expected = (max(1, round(w * size / h)), size)
    assert out.shape == (expected[1], expected[0], 3)


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), channels=st.sampled_from([0, 1, 2, 3, 4]),
       depth=st.sampled_from([np.uint8, np.uint16]), scale=st.sampled_from([0.5, 1, 2, 3]))
def test_shape_dtype_and_channels_survive(h, w, channels, depth, scale):
    rng = np.random.default_rng(h * 31 + w)
    shape = (h, w) if channels == 0 else (h, w, channels)
    arr = rng.integers(0, np.iinfo(depth).max, shape, dtype=depth)
    out = upscale(arr, FAST, scale=scale, progress=False)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    assert out.dtype == depth and out.shape == (th, tw, *shape[2:])


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60), tile=st.integers(16, 40),
       overlap=st.integers(0, 7), batch=st.integers(1, 4), fits=st.integers(16, 40))
def test_tiled_with_batches_and_oom_backoff_equals_untiled(h, w, tile, overlap, batch, fits):
    """Batched tiles, and tiles shrunk by simulated OOM, blend to exactly the untiled result."""
    rng = np.random.default_rng(h * 100 + w)
    img = rng.random((3, h, w), dtype=np.float32)

    def fn(x):
        if x.shape[0] > 1 and x.shape[-1] > fits // 2 or max(x.shape[-2:]) > fits:
            raise TileOutOfMemoryError("simulated")
        return (x * 0.5 + 0.25).repeat(2, axis=2).repeat(2, axis=3)

    expected = (img * 0.5 + 0.25).repeat(2, axis=1).repeat(2, axis=2)
    out, used = run_with_backoff(fn, img, 2, tile, overlap, batch)  # 16-px tiles always fit
    assert used <= tile and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_backoff_tile_counts_survive_overlap_larger_than_the_tile():
    from pipeline_lib.upscale.tiling import count_tiles

    # on_retry counts tiles with the caller's overlap (32) after halving to 16: used to divide by 0
    assert count_tiles(40, 40, 16, 32) == 16  # 4×4 tiles of 16 px with the clamped overlap 7

    def fits_16(x):
        if x.shape[-1] > 16:
            raise TileOutOfMemoryError("simulated")
        return x

    # a 17-px tile that does not fit gets one try at the 16-px minimum instead of giving up
    out, used = run_with_backoff(fits_16, np.zeros((3, 5, 17), np.float32), 1, 17, 4)
    assert used == 16 and out.shape == (3, 5, 17)
