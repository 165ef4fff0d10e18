"""The optimised torch paths (channels_last, batched tiles, torch.compile, fused up-convs) give
the plain model's pixels. Tolerances: float outputs within 1e-4 (oneDNN picks other summation
orders per memory format / batch size; 1e-4 of full scale is < 0.03 of a uint8 level), uint8
images identical or within one level; bf16 is the exception, checked by PSNR."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import psnr

from pipeline_lib.errors import InvalidParameterError
from pipeline_lib.upscale import load_upscaler, upscale
from pipeline_lib.upscale.backends import torch_backend
from pipeline_lib.upscale.tiling import run_tiled

MODEL = "realesr-animevideov3"


@pytest.fixture(scope="module")
def up():
    return load_upscaler(MODEL, device="cpu", backend="torch", progress=False)


def _plain(up, batch: np.ndarray) -> np.ndarray:
    """The reference: the same module, NCHW-contiguous fp32 input, no other tricks."""
    with torch.inference_mode():
        y = up.native(torch.from_numpy(np.ascontiguousarray(batch)))
    return y.clamp(0, 1).contiguous().numpy()


def test_run_matches_plain_model(up):
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)
    fast, plain = up.run(x), _plain(up, x)
    assert fast.shape == plain.shape == (1, 3, 80, 112)
    assert fast.dtype == np.float32
    assert np.abs(fast - plain).max() < 1e-4


def test_batched_tiles_match_one_by_one(up):
    img = np.random.default_rng(1).random((3, 40, 56), dtype=np.float32)
    one = run_tiled(up.run, img, up.scale, tile=24, overlap=8, batch=1)
    many = run_tiled(up.run, img, up.scale, tile=24, overlap=8, batch=4)
    assert one.shape == many.shape == (3, 160, 224)
    assert np.abs(one - many).max() < 1e-4


def test_cpu_defaults_no_batching_no_compile(up):
    assert up.batch == 1
    assert "compiled" not in up.speedups
    assert up.default_tile == 384  # SRVGG compact on CPU (RRDBNet gets 256)


def test_compile_option_is_checked():
    with pytest.raises(InvalidParameterError, match="compile must be True or False"):
        torch_backend.load("x.pth", device="cpu", compile="yes")
    with pytest.raises(InvalidParameterError, match="takes no options.*compile=True/False"):
        torch_backend.load("x.pth", device="cpu", fast=True)


def test_compiled_model_gives_the_same_image(small_photo):
    pytest.importorskip("torch._inductor")
    arr = np.asarray(small_photo)[:16, :16]
    plain = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False)
    try:
        fast = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False,
                       compile=True)
    except Exception as exc:  # no C++ compiler for inductor here: nothing to compare
        if "compiler" in str(exc).lower() or "cpp" in str(exc).lower():
            pytest.skip(f"torch.compile cannot build CPU kernels here: {exc}")
        raise
    assert fast.shape == plain.shape == (64, 64, 3)
    assert np.abs(fast.astype(int) - plain.astype(int)).max() <= 1


@pytest.mark.parametrize("text, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n", True),
    ("flags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n", False),  # AVX-512 emulates bf16
    ("Features\t: fp asimd evtstrm aes sve bf16 i8mm\n", True),          # Arm v8.6+
    ("Features\t: fp asimd evtstrm aes\n", False),
    ("model name\t: bf16 in a name is not a flag\n", False),
    ("", False),
])
def test_native_bf16_read_from_cpu_flags(text, native):
    from pipeline_lib.devices import cpu_has_native_bf16

    assert cpu_has_native_bf16(text) is native


@pytest.fixture
def fresh_upscaler_cache():
    """Cached upscalers built under a patched ``supports_bf16`` must not outlive the test, even
    when it fails half-way."""
    from pipeline_lib.upscale import unload_upscalers

    unload_upscalers()
    yield unload_upscalers
    unload_upscalers()


def test_cpu_bf16_only_where_native(monkeypatch, small_photo, caplog, fresh_upscaler_cache):
    """dtype='bf16' runs in bf16 on CPUs that compute it natively (forced here, so the path runs
    on any CPU) and falls back to fp32, with a warning, on CPUs that would emulate it."""
    unload_upscalers = fresh_upscaler_cache
    arr = np.asarray(small_photo)[:24, :24]
    ref = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False, dtype="fp32")
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: True)
    unload_upscalers()
    got = upscale(arr, MODEL, backend="torch", device="cpu", dtype="bf16", tile=0,
                  progress=False, full_result=True)
    assert got.dtype == "bfloat16"
    out = np.asarray(got.image)
    assert out.shape == ref.shape == (96, 96, 3)
    assert 35.0 < psnr(out, ref) < float("inf")  # bf16 changes pixels, a little

    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: False)
    unload_upscalers()
    with caplog.at_level("WARNING"):
        res = upscale(arr, MODEL, backend="torch", device="cpu", dtype="bf16", tile=0,
                      progress=False, full_result=True)
    assert res.dtype == "float32"
    assert "bf16 has no native support" in caplog.text
    assert np.array_equal(np.asarray(res.image), ref)


def test_native_bf16_cpu_defaults_to_bf16_and_says_how_to_get_fp32(monkeypatch, caplog,
                                                                  fresh_upscaler_cache):
    """As GPUs default to fp16, a CPU with native bf16 defaults to bf16 for the ESRGAN/SRVGG
    family (fp32 residual sums), with one log line naming the way back to exact output."""
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: True)
    hint = "dtype='fp32' (CLI --dtype fp32) gives the exact fp32 output"
    for model in (MODEL, "realesrgan-x4plus"):
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline_lib"):
            up = load_upscaler(model, device="cpu", backend="torch", progress=False)
        assert up.dtype == "bfloat16" and "fp32_trunk" in up.speedups, model
        assert caplog.text.count(hint) == 1, model
    caplog.clear()
    fresh_upscaler_cache()
    with caplog.at_level("INFO", logger="pipeline_lib"):
        up = load_upscaler(MODEL, device="cpu", backend="torch", dtype="fp32", progress=False)
    assert "loaded upscaler" in caplog.text  # a real load, not a cache hit
    assert up.dtype == "float32" and hint not in caplog.text  # fp32 asked for: no advice
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: False)
    fresh_upscaler_cache()
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline_lib"):
        up = load_upscaler(MODEL, device="cpu", backend="torch", progress=False)
    assert up.dtype == "float32" and hint not in caplog.text  # emulated bf16 would be slower


def test_fp32_on_request_gives_the_fp32_bytes_on_a_native_bf16_cpu(monkeypatch, small_photo,
                                                                   fresh_upscaler_cache):
    arr = np.asarray(small_photo)[:20, :24]
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: False)  # whatever this CPU is
    plain = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False)
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: True)
    fresh_upscaler_cache()
    default = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, progress=False)
    exact = upscale(arr, MODEL, backend="torch", device="cpu", tile=0, dtype="fp32",
                    progress=False)
    assert np.array_equal(exact, plain)
    assert not np.array_equal(default, plain)  # the default really took the bf16 path
    assert psnr(default, plain) > 45.0


def test_bf16_default_only_for_architectures_with_an_fp32_residual_path(monkeypatch):
    """Other architectures keep fp32 by default on a native-bf16 CPU (bf16 still on request)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: True)
    cpu = torch.device("cpu")
    for arch, default in (("ESRGAN", torch.bfloat16), ("Compact", torch.bfloat16),
                          ("SwinIR", torch.float32), ("HAT", torch.float32)):
        desc = SimpleNamespace(architecture=SimpleNamespace(id=arch), supports_bfloat16=True,
                               supports_half=True)
        assert torch_backend.choose_dtype(desc, cpu, None, "m") == default, arch
        assert torch_backend.choose_dtype(desc, cpu, "bf16", "m") == torch.bfloat16, arch
        assert torch_backend.choose_dtype(desc, cpu, "fp32", "m") == torch.float32, arch


@pytest.mark.parametrize("kw, swapped", [
    (dict(num_blocks=1, scale=4), 2),
    (dict(num_blocks=1, scale=2, shuffle_factor=2, in_nc=12), 1),
    (dict(num_blocks=1, scale=8), 3),
    (dict(num_blocks=1, scale=4, plus=True), 2),
    (dict(num_blocks=1, scale=1), 0),
    (dict(num_blocks=1, scale=4, upsampler="pixel_shuffle"), 0),
])
def test_nearest_upconv_rewrite_computes_the_same_function(kw, swapped):
    import copy

    from spandrel.architectures.ESRGAN import ESRGAN

    from pipeline_lib.upscale.backends.nearest_upconv import rewrite_nearest_upconv

    torch.manual_seed(0)
    plain = ESRGAN(**kw).eval()
    fast = copy.deepcopy(plain)
    assert rewrite_nearest_upconv(fast) == swapped
    assert sum(isinstance(m, torch.nn.Upsample) for m in fast.modules()) == \
        sum(isinstance(m, torch.nn.Upsample) for m in plain.modules()) - swapped
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.rand(1, 3, 20, 28).contiguous(memory_format=fmt)
        with torch.inference_mode():
            a, b = plain(x), fast(x)
        assert a.shape == b.shape
        assert (a - b).abs().max() < 1e-5


def test_x4plus_on_cpu_matches_spandrel():
    """The real x4plus weights with both up-convolutions rewritten: spandrel's output."""
    from spandrel import ModelLoader

    up = load_upscaler("realesrgan-x4plus", device="cpu", backend="torch", dtype="fp32",
                       progress=False)  # fp32 asked for: a native-bf16 CPU defaults to bf16
    assert "fused_upconv×2" in up.speedups
    ref = ModelLoader().load_from_state_dict(
        torch_backend.load_state_dict(Path(up.weights))).model.eval()
    x = np.random.default_rng(2).random((1, 3, 24, 20), dtype=np.float32)
    with torch.inference_mode():
        want = ref(torch.from_numpy(x)).clamp(0, 1).numpy()
    got = up.run(x)
    assert got.shape == want.shape == (1, 3, 96, 80)
    assert np.abs(got - want).max() < 1e-4


# --- dtype="bf16" on a CPU with ESRGAN: bf16 convolutions around an fp32 residual trunk

@pytest.mark.parametrize("kw", [
    dict(num_blocks=2, scale=4),
    dict(num_blocks=2, scale=4, plus=True),                 # ESRGAN+ dense blocks
    dict(num_blocks=1, scale=2, shuffle_factor=2, in_nc=12),  # x2plus layout
    dict(num_blocks=1, scale=1),                            # no upsampling stage
    dict(num_blocks=1, scale=4, upsampler="pixel_shuffle"),
])
def test_fp32_trunk_rewrite_computes_spandrels_function(kw):
    """With fp32 as the 'reduced' format the rewritten model must be spandrel's model exactly:
    this pins the restated dense-block arithmetic to spandrel's."""
    import copy

    from spandrel.architectures.ESRGAN import ESRGAN

    from pipeline_lib.upscale.backends.mixed_bf16 import DenseBlockFp32Sum, bf16_with_fp32_trunk

    torch.manual_seed(0)
    plain = ESRGAN(**kw).eval()
    for block in plain.modules():  # non-zero ESRGAN+ 1×1 convs, so their branch is exercised
        if getattr(block, "conv1x1", None) is not None:
            torch.nn.init.normal_(block.conv1x1.weight, std=0.05)
    mixed = copy.deepcopy(plain)
    assert bf16_with_fp32_trunk(mixed, torch.float32)
    assert sum(isinstance(m, DenseBlockFp32Sum) for m in mixed.modules()) == 3 * kw["num_blocks"]
    x = torch.rand(1, 3, 16, 12)
    with torch.inference_mode():
        a, b = plain(x), mixed(x)
    assert a.shape == b.shape
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw", [dict(num_conv=2, upscale=4), dict(num_conv=3, upscale=2, num_feat=16)])
def test_fp32_base_rewrite_computes_spandrels_srvgg_function(kw):
    """SRVGG compact: with fp32 as the 'reduced' format the rewritten model is spandrel's."""
    import copy

    from spandrel.architectures.Compact import Compact as SRVGGNetCompact

    from pipeline_lib.upscale.backends.mixed_bf16 import bf16_with_fp32_base, bf16_with_fp32_residual

    torch.manual_seed(0)
    plain = SRVGGNetCompact(**kw).eval()
    mixed = copy.deepcopy(plain)
    assert bf16_with_fp32_base(mixed, torch.float32)
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode():
        assert torch.equal(plain(x), mixed(x))
    half = copy.deepcopy(plain)
    assert bf16_with_fp32_residual(half)  # the real thing: bf16 body, fp32 sum with the input
    assert {p.dtype for p in half.body.parameters()} == {torch.bfloat16}
    with torch.inference_mode():
        y = half(x)
    assert y.dtype == torch.float32 and y.shape == plain(x).shape
    assert not bf16_with_fp32_base(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3)))


def test_fp32_trunk_rewrite_leaves_other_layouts_alone():
    from spandrel.architectures.ESRGAN import ESRGAN

    from pipeline_lib.upscale.backends.mixed_bf16 import bf16_with_fp32_trunk

    other = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1))
    before = [p.clone() for p in other.parameters()]
    assert not bf16_with_fp32_trunk(other)
    assert all(p.dtype == torch.float32 and torch.equal(p, q)
               for p, q in zip(other.parameters(), before))
    net = ESRGAN(num_blocks=1, scale=4).eval()
    assert bf16_with_fp32_trunk(net)
    first, last = net.model[0], net.model[-1]
    assert first.weight.dtype == last.weight.dtype == torch.float32   # image in, image out: fp32
    convs = [m for m in net.model[1].modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.weight.dtype for c in convs[:-1]} == {torch.bfloat16}   # the dense blocks
    assert convs[-1].weight.dtype == torch.float32                     # the trunk's closing conv


def test_x4plus_bf16_on_cpu_keeps_closer_to_fp32_than_whole_bf16(monkeypatch, small_photo,
                                                                 fresh_upscaler_cache):
    """The real x4plus weights: dtype='bf16' on a CPU (bf16 forced as native so this runs on any
    CPU) takes the fp32-trunk path, which lands nearer the fp32 image than casting the whole
    model would; both stay visually equal (PSNR well above 40 dB)."""
    unload_upscalers = fresh_upscaler_cache
    arr = np.asarray(small_photo)[8:40, 8:40]
    ref = np.asarray(upscale(arr, "realesrgan-x4plus", backend="torch", device="cpu", tile=0,
                             progress=False, dtype="fp32")).astype(np.int16)
    monkeypatch.setattr(torch_backend, "supports_bf16", lambda dev: True)
    outs = {}
    for trunk in (True, False):
        if not trunk:
            monkeypatch.setattr(torch_backend, "bf16_with_fp32_residual", lambda m: False)
        unload_upscalers()
        res = upscale(arr, "realesrgan-x4plus", backend="torch", device="cpu", dtype="bf16",
                      tile=0, progress=False, full_result=True)
        assert res.dtype == "bfloat16"
        assert load_upscaler("realesrgan-x4plus", device="cpu", backend="torch", dtype="bf16",
                             progress=False).speedups.count("fp32_trunk") == int(trunk)
        outs[trunk] = np.asarray(res.image).astype(np.int16)
        assert outs[trunk].shape == ref.shape == (128, 128, 3)
    mixed, whole = psnr(outs[True], ref), psnr(outs[False], ref)
    assert 45.0 < whole < mixed < float("inf")
    assert np.abs(outs[True] - ref).max() <= np.abs(outs[False] - ref).max()


# --- finishing on the device (Upscaler.run_whole): on a GPU by default; forced onto the CPU here
# (the module, not the upscale() function that pipeline_lib.upscale also names)
U = importlib.import_module("pipeline_lib.upscale.api")


@pytest.fixture
def whole_calls(monkeypatch):
    """Let upscale() take run_whole on the CPU and count (and optionally fail) its calls."""
    up = load_upscaler(MODEL, device="cpu", backend="torch", progress=False)  # what upscale() gets
    calls = {"n": 0, "fail": False}
    real = up.run_whole

    def spy(chw):
        calls["n"] += 1
        if calls["fail"]:
            raise U.TileOutOfMemoryError("out of cuda memory on a test tile")
        return real(chw)

    monkeypatch.setattr(U, "FINISH_ON_DEVICE", frozenset({"cpu"}))
    monkeypatch.setattr(up, "run_whole", spy)
    return calls


def _run(image, **kw):
    return upscale(image, MODEL, backend="torch", device="cpu", progress=False, full_result=True,
                   **kw)


def test_run_whole_is_off_on_the_cpu_by_default(up):
    assert up.run_whole is not None
    assert "cpu" not in U.FINISH_ON_DEVICE and "cuda" in U.FINISH_ON_DEVICE


def test_run_whole_gives_the_general_paths_bytes(small_photo, whole_calls):
    arr = np.asarray(small_photo)
    for image in (small_photo, arr):
        whole_calls["n"] = 0
        fast = _run(image, tile=0)
        assert whole_calls["n"] == 1
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(U, "FINISH_ON_DEVICE", frozenset())
            plain = _run(image, tile=0)
        assert whole_calls["n"] == 1  # the general path did not call it
        a, b = np.asarray(fast.image), np.asarray(plain.image)
        assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (160, 192, 3)
        assert np.array_equal(a, b)
        assert type(fast.image) is type(image) and fast.tile == plain.tile == 0
    # a tile that covers the image is one pass too
    whole_calls["n"] = 0
    assert _run(arr, tile=64).size == (192, 160) and whole_calls["n"] == 1


def test_run_whole_only_for_untiled_one_pass_8bit_rgb(small_photo, whole_calls):
    arr = np.asarray(small_photo)
    rgba = np.dstack([arr, np.arange(arr.shape[0] * arr.shape[1], dtype=np.uint8)
                      .reshape(arr.shape[:2])])
    jobs = {
        "tiled": dict(image=arr, tile=24),
        "resized": dict(image=arr, scale=2, tile=0),
        "two passes": dict(image=arr[:12, :12], scale=16, tile=0),
        "rgba": dict(image=rgba, tile=0),
        "gray": dict(image=arr[..., 0], tile=0),
        "16-bit": dict(image=arr.astype(np.uint16) * 257, tile=0),
    }
    for name, kw in jobs.items():
        res = _run(kw.pop("image"), **kw)
        assert whole_calls["n"] == 0, name
        assert res.image.dtype in (np.uint8, np.uint16), name


def test_run_whole_out_of_memory_falls_back_to_the_tiler(small_photo, whole_calls):
    arr = np.asarray(small_photo)
    whole_calls["fail"] = True
    res = _run(arr, tile=0)
    assert whole_calls["n"] == 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(U, "FINISH_ON_DEVICE", frozenset())
        plain = _run(arr, tile=0)
    assert np.array_equal(res.image, plain.image)
