"""Real-ESRGAN x4plus: our ``upscale()`` vs the official ``RealESRGANer``, ncnn and OpenCV, one run.

Every method runs the same weights (the packaged ncnn Real-ESRGAN x4plus, converted offline to
safetensors by ``converted_from_ncnn``; RealESRGANer gets a ``.pth`` saved from that state dict,
ncnn runs the packaged .param/.bin itself) on the same crops of assets/astronaut.png, untiled and
at one tile size. Each (method, size, tiling) runs in a fresh subprocess, so its peak RSS is its
own. ``RealESRGANer`` (``realesrgan`` + ``basicsr`` + ``opencv-python``) lives in a separate venv
this script creates on first use (bench/.venv-peer), because opencv-python clashes with the
opencv-contrib build the library uses; basicsr needs a ``torchvision.transforms.functional_tensor``
alias on current torchvision, installed in the worker below.

Every row runs in ``--rounds`` fresh processes, the rounds in alternating order (A-B-C, C-B-A), so
a shared machine's drifting speed hits all methods alike. Reported: best and median seconds over
all rounds' timed repeats (after one untimed warm-up per process: on CPU a 32² crop, so
first-call set-up is not counted but 512² runs do not cost double), megapixels of
output per second, peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), PSNR against
RealESRGANer's untiled output. RealESRGANer runs with ``pre_pad=0``: with it, its untiled maths
equals ours (its default pre_pad=10 reflect-pads the input, which changes border pixels).

Tiled rows give every method tiles of the same side ``--tile`` as the network sees them: ours and
ncnn tiles of that size overlapping by 32 px and feather-blended; RealESRGANer ``tile=T-20`` with
its ``tile_pad=10`` context on each side, cropped (so the default 148 is its usual tile 128).

    python bench/upscale.py                # 128², 256², 512²; 3 repeats (1 at 512²)
    python bench/upscale.py --quick        # 48², 96²; 1 repeat: a few minutes on 2 CPU cores
    python bench/upscale.py --device cuda  # fp16 on a GPU (the default when one is present)

On a GPU an extra untiled fp32 row shows what fp16 costs in pixels; on a CPU with native bf16
(AVX512-BF16/AMX) extra untiled ``dtype="bf16"`` rows show that opt-in's speed and its PSNR
against our fp32 output, next to ncnn's own bf16 mode (``use_bf16_storage``).

Ends with one machine-readable line:
``summary: vs_realesrganer=… vs_ncnn=… psnr_vs_realesrganer_db=… peak_rss_ratio=…`` where the
speed ratios are medians over sizes of (their best seconds / our best seconds), untiled, i.e. at
equal output; the PSNR is the lowest over sizes, untiled; the memory ratio is ours at default
settings over RealESRGANer at its defaults (untiled) on the largest size.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

ASSET = ROOT / "assets" / "astronaut.png"
MODEL = "realesrgan-x4plus"
SCALE = 4
OVERLAP = 32  # ours / ncnn tiles share this many input px (the library default)
TILE_PAD = 10  # RealESRGANer's default tile_pad
PEER_PACKAGES = ["realesrgan", "basicsr"]


# --------------------------------------------------------------------------- workers

def _read_rgb(path: str):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _warm_input(path: str, device: str):
    """CPU: a 32² crop (pays one-off set-up without doubling a 512² run); GPU: the input itself
    (cuDNN autotunes per shape, which a real job pays once)."""
    img = _read_rgb(path)
    return img if device.startswith("cuda") else img[:32, :32].copy()


def _cuda_peak(device: str, reset: bool = False) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    torch.cuda.synchronize()
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2 ** 20


def worker_ours(a) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline_lib import upscale

    tile = None if a.tile < 0 else a.tile
    kw = dict(model=a.model, tile=tile, backend="torch" if a.model == MODEL else "auto",
              device=a.device, progress=False, full_result=True)
    if a.dtype:
        kw["dtype"] = a.dtype
    img = _read_rgb(a.input)
    upscale(_warm_input(a.input, a.device), **kw)
    _cuda_peak(a.device, reset=True)

    def go():
        res = upscale(img, **kw)
        if a.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize()
        return res

    res, times = C.timed(go, a.repeat)
    return {"image": res.image, "times": times, "tile": res.tile, "dtype": res.dtype,
            "gpu_peak_mb": _cuda_peak(a.device)}


def worker_realesrganer(a) -> dict:
    import numpy as np
    import torch
    import torchvision.transforms.functional as tvf

    # basicsr imports this module, which torchvision removed (0.17); its functions live here now
    sys.modules.setdefault("torchvision.transforms.functional_tensor", tvf)
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from realesrgan import RealESRGANer

    net = RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
    # --tile is the side the network sees; RealESRGANer's tile is the core it pads by tile_pad
    core = max(a.tile - 2 * TILE_PAD, 1) if a.tile > 0 else 0
    up = RealESRGANer(scale=SCALE, model_path=a.pth, model=net, tile=core,
                      tile_pad=TILE_PAD, pre_pad=0, half=a.device.startswith("cuda"),
                      device=torch.device(a.device))
    bgr = np.ascontiguousarray(_read_rgb(a.input)[..., ::-1])
    up.enhance(np.ascontiguousarray(_warm_input(a.input, a.device)[..., ::-1]), outscale=SCALE)
    _cuda_peak(a.device, reset=True)

    def go():
        out = up.enhance(bgr, outscale=SCALE)[0]
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    out, times = C.timed(go, a.repeat)
    return {"image": np.ascontiguousarray(out[..., ::-1]), "times": times, "tile": max(a.tile, 0),
            "dtype": "float16" if a.device.startswith("cuda") else "float32",
            "gpu_peak_mb": _cuda_peak(a.device)}


def worker_ncnn(a) -> dict:
    """The packaged .param/.bin through the ncnn package, tiled by our tiler (so only the
    network differs from ours), with ncnn's CPU path (or Vulkan with --device cuda when ncnn
    sees a GPU)."""
    sys.path.insert(0, str(ROOT))
    import ncnn
    import numpy as np


    from pipeline_lib.upscale.weights import ncnn_files

    param, binf = ncnn_files("REALESRGAN_X4PLUS_UP4X")
    net = ncnn.Net()
    vulkan = a.device.startswith("cuda") and ncnn.get_gpu_count() > 0
    net.opt.use_vulkan_compute = vulkan
    net.opt.num_threads = os.cpu_count() or 1
    # ncnn's bf16 mode stores activations and weights in bf16 (it still computes in fp32)
    net.opt.use_bf16_storage = a.dtype == "bf16"
    net.load_param(str(param))
    net.load_model(str(binf))

    def fn(batch):
        outs = []
        for chw in batch:
            src = np.ascontiguousarray(chw)  # ncnn.Mat borrows this memory: keep it alive
            with net.create_extractor() as ex:
                ex.input("data", ncnn.Mat(src))
                _, mat = ex.extract("output")
                outs.append(np.array(mat))
        return np.clip(np.stack(outs), 0.0, 1.0)

    out, times = _time_tiled(fn, a)
    return {"image": out, "times": times, "tile": max(a.tile, 0),
            "dtype": "ncnn-vulkan" if vulkan else f"ncnn-cpu-{a.dtype or 'fp32'}",
            "gpu_peak_mb": None}


def _time_tiled(fn, a):
    """Time ``fn`` (float N×3×h×w → ×4) through the library's tiler on the input, after a warm-up:
    only the network differs from ours. Returns (uint8 image, seconds per repeat)."""
    import numpy as np

    from pipeline_lib.upscale.tiling import effective_overlap, run_tiled

    overlap = effective_overlap(a.tile, OVERLAP) if a.tile > 0 else 0  # as upscale() caps it

    def go(img):
        chw = np.multiply(img.transpose(2, 0, 1), np.float32(1.0 / 255.0), dtype=np.float32)
        out = run_tiled(fn, chw, SCALE, max(a.tile, 0), overlap).transpose(1, 2, 0)
        return np.clip(out * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)

    img = _read_rgb(a.input)
    go(_warm_input(a.input, a.device))
    return C.timed(lambda: go(img), a.repeat)


def worker_openvino(a) -> dict:
    """The same weights exported to OpenVINO IR (pipeline_lib's openvino backend), CPU plugin."""
    sys.path.insert(0, str(ROOT))
    from pipeline_lib.upscale.backends import openvino_backend
    from pipeline_lib.upscale.registry import MODELS

    up = openvino_backend.load(MODELS[MODEL], dtype=a.dtype, progress=False)
    out, times = _time_tiled(up.run, a)
    return {"image": out, "times": times, "tile": max(a.tile, 0), "dtype": f"openvino-{up.dtype}",
            "gpu_peak_mb": None}


WORKERS = {"ours": worker_ours, "realesrganer": worker_realesrganer, "ncnn": worker_ncnn,
           "openvino": worker_openvino}


def worker_main(a) -> int:
    import numpy as np

    out = Path(a.out)
    res = WORKERS[a.worker](a)
    np.save(out / "image.npy", np.asarray(res.pop("image")))
    res["peak_rss_mb"] = C.peak_rss_mb()
    C.write_result(out / "result.json", res)
    return 0


# --------------------------------------------------------------------------- peer venv

def peer_python(venv: Path) -> Path:
    """The peer venv's python, creating the venv (and installing RealESRGANer) if needed."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import sys, torchvision.transforms.functional as f; "
             "sys.modules['torchvision.transforms.functional_tensor'] = f; import realesrgan"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} with {' '.join(PEER_PACKAGES)} (one-off, a few minutes)…", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = []
    try:  # the same torch as ours, so only the inference code differs
        import torch
        import torchvision

        pins = [f"torch=={torch.__version__.split('+')[0]}",
                f"torchvision=={torchvision.__version__.split('+')[0]}"]
    except ImportError:
        pass
    subprocess.run([str(py), "-m", "pip", "install", "-q", *pins, *PEER_PACKAGES], check=True)
    subprocess.run(probe, check=True)
    return py


# --------------------------------------------------------------------------- driver

def save_weights_pth(tmp: Path) -> Path:
    """RealESRGANer wants a .pth with ``params_ema``: write ours (same tensors) into one."""
    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(ROOT))
    from pipeline_lib.upscale.registry import MODELS
    from pipeline_lib.upscale.weights import converted_from_ncnn

    path = tmp / "RealESRGAN_x4plus_from_ncnn.pth"
    torch.save({"params_ema": load_file(str(converted_from_ncnn(MODELS[MODEL])))}, path)
    return path


def crop(size: int, tmp: Path) -> Path:
    from PIL import Image

    img = Image.open(ASSET).convert("RGB")
    w, h = img.size
    if size > min(w, h):
        raise SystemExit(f"--sizes: {size} is larger than {ASSET.name} ({w}×{h}).")
    left, top = (w - size) // 2, (h - size) // 2
    path = tmp / f"crop{size}.png"
    img.crop((left, top, left + size, top + size)).save(path)
    return path


def run_one(python: Path, kind: str, inp: Path, tile: int, repeat: int, device: str, tmp: Path,
            pth: Path, model: str = MODEL, dtype: str | None = None, timeout: float | None = None
            ) -> dict:
    import numpy as np

    out = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{kind}-"))
    argv = [str(Path(__file__).resolve()), "--worker", kind, "--input", str(inp), "--out", str(out),
            "--tile", str(tile), "--repeat", str(repeat), "--device", device, "--pth", str(pth),
            "--model", model] + (["--dtype", dtype] if dtype else [])
    res = C.run_worker(python, argv, out / "result.json", timeout=timeout)
    res["image"] = np.load(out / "image.npy")
    res.update(C.summarise(res["times"]))
    return res


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fmt(x, spec=".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and x == float("inf"):
        return "inf"
    return format(x, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    p.add_argument("--sizes", type=int, nargs="+", help="input side lengths (default 128 256 512)")
    p.add_argument("--tile", type=int, default=None,
                   help="side of the tile the network sees, for every method (default 148, i.e. "
                        "RealESRGANer's tile 128 + its 10-px pad on both sides; 80 with --quick)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per row (default 3)")
    p.add_argument("--rounds", type=int, default=None,
                   help="fresh-process rounds per row, alternating order, best kept "
                        "(default 2; 1 with --quick)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--peer-venv", type=Path, default=HERE / ".venv-peer")
    p.add_argument("--skip", nargs="*", default=[], choices=["realesrganer", "ncnn", "opencv", "openvino"])
    p.add_argument("--json", type=Path, help="also write every row here")
    # worker mode (internal)
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--pth", help=argparse.SUPPRESS)
    p.add_argument("--model", default=MODEL, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.repeat = a.repeat or 1
        a.tile = -1 if a.tile is None else a.tile
        return worker_main(a)

    import torch

    device = a.device or default_device()
    sizes = a.sizes or ([48, 96] if a.quick else [128, 256, 512])
    tile = a.tile or (80 if a.quick else 148)
    repeat = a.repeat or (1 if a.quick else 3)
    a.rounds = a.rounds or (1 if a.quick else 2)
    gpu = device.startswith("cuda")
    sys.path.insert(0, str(ROOT))
    from pipeline_lib.devices import cpu_has_native_bf16

    native_bf16 = not gpu and cpu_has_native_bf16()
    print(f"machine: {C.machine_description()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); device {device}"
          + (f" ({torch.cuda.get_device_name()})" if gpu else
             f" ({'native' if native_bf16 else 'no native'} bf16)"))
    print(f"sizes {sizes}, tile {tile} (ours/ncnn overlap {OVERLAP}, RealESRGANer tile_pad "
          f"{TILE_PAD}), {repeat} timed repeat(s); times: best / median seconds", flush=True)

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-upscale-") as td:
        tmp = Path(td)
        pth = save_weights_pth(tmp)
        peer = None if "realesrganer" in a.skip else peer_python(a.peer_venv)
        me = Path(sys.executable)
        for size in sizes:
            inp = crop(size, tmp)
            rep = 1 if size >= 512 and not gpu and a.repeat is None else repeat
            plan = [("realesrganer", peer, 0, None, MODEL), ("ours", me, 0, None, MODEL),
                    ("ncnn", me, 0, None, MODEL),
                    ("realesrganer", peer, tile, None, MODEL), ("ours", me, tile, None, MODEL),
                    ("ncnn", me, tile, None, MODEL), ("ours", me, -1, None, MODEL)]
            if gpu or native_bf16:  # what the default fp16 / bf16 costs: the same run in fp32,
                # and on such CPUs ncnn's own bf16 mode as the default's peer
                plan.append(("ours", me, 0, "fp32", MODEL))
            if native_bf16:
                plan.append(("ncnn", me, 0, "bf16", MODEL))
            if not gpu and "openvino" not in a.skip and _has_openvino():
                plan += [("openvino", me, 0, "fp32", MODEL), ("openvino", me, tile, "fp32", MODEL)]
                if native_bf16:
                    plan.append(("openvino", me, 0, None, MODEL))
            if "opencv" not in a.skip:
                plan.append(("ours", me, -1, None, "fsrcnn-x4"))
                from pipeline_lib.upscale.registry import MODELS
                from pipeline_lib.upscale.weights import weights_available
                if "edsr-x4" in MODELS and weights_available(MODELS["edsr-x4"]):
                    plan.append(("ours", me, -1, None, "edsr-x4"))
            plan = [row for row in plan
                    if row[1] is not None and not (row[0] == "ncnn" and "ncnn" in a.skip)]
            # each row keeps its best round; all rounds' times feed the median
            got: dict[tuple, dict] = {}
            images: dict[tuple, object] = {}
            for rnd, (kind, py, t, dt, model) in C.alternating(plan, a.rounds):
                key = (kind, t, dt, model)
                label = kind if model == MODEL else f"{model} (opencv)"
                try:
                    r = run_one(py, kind, inp, t, rep, device, tmp, pth, model, dt)
                except Exception as exc:  # report, go on: one broken peer must not hide the rest
                    print(f"  {label} tile={t}: FAILED: {str(exc).splitlines()[0]}", flush=True)
                    continue
                times = got[key]["times"] + r["times"] if key in got else r["times"]
                if key not in got or r["best_s"] < got[key]["best_s"]:
                    images[key] = r.pop("image")
                    got[key] = r
                got[key].update(C.summarise(times), times=times)
                print(f"  round {rnd + 1}: {size:4d}² {label:22s} tile {t:4d} "
                      f"{r['best_s']:8.2f} s", flush=True)
            ref = images.get(("realesrganer", 0, None, MODEL))
            untiled_ours = images.get(("ours", 0, None, MODEL))
            for kind, _py, t, dt, model in plan:
                key = (kind, t, dt, model)
                if key not in got:
                    continue
                r, img = got[key], images[key]
                label = kind if model == MODEL else f"{model} (opencv)"
                r.update(method=label, size=size, tile_arg=t, dtype_arg=dt or "")
                r["psnr_db"] = C.psnr(img, ref) if ref is not None and img.shape == ref.shape else None
                if (dt or kind != "ours") and untiled_ours is not None and t == 0:
                    r["psnr_vs_ours_default_db"] = C.psnr(img, untiled_ours)
                same = images.get(("ours", t, dt, MODEL), images.get(("ours", t, None, MODEL)))
                if kind == "openvino" and same is not None:  # fp32 against our fp32
                    r["psnr_vs_ours_same_dtype_db"] = C.psnr(img, same)
                r["mpix_s"] = (size * SCALE) ** 2 / 1e6 / r["best_s"]
                rows.append(r)
                mem = r["gpu_peak_mb"] if gpu else r["peak_rss_mb"]
                tile_txt = {0: "none", -1: f"auto→{r['tile']}"}.get(t, str(t))
                print(f"  {size:4d}² {label:22s} tile {tile_txt:9s} {r['best_s']:8.2f} / "
                      f"{r['median_s']:8.2f} s  {r['mpix_s']:6.3f} MP/s  "
                      f"{'GPU' if gpu else 'RSS'} {mem:7.0f} MiB  PSNR vs RealESRGANer "
                      f"{fmt(r['psnr_db'], '.1f')} dB"
                      + (f"  ({dt} vs our default {fmt(r.get('psnr_vs_ours_default_db'), '.1f')} dB)"
                         if dt else ""), flush=True)

    def pick(method, size, t, dt=""):
        for r in rows:
            if (r["method"], r["size"], r["tile_arg"], r["dtype_arg"]) == (method, size, t, dt):
                return r
        return None

    print("\n| input | method | tile | best s | median s | MP/s | peak MiB | PSNR vs RealESRGANer dB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r["gpu_peak_mb"] if gpu else r["peak_rss_mb"]
        tile_txt = {0: "none", -1: f"auto ({r['tile']})"}.get(r["tile_arg"], str(r["tile_arg"]))
        name = r["method"] + (f" {r['dtype_arg']}" if r["dtype_arg"] else "")
        if "psnr_vs_ours_default_db" in r:
            name += f" ({fmt(r['psnr_vs_ours_default_db'], '.1f')} dB vs our default)"
        print(f"| {r['size']}² | {name} | {tile_txt} | {r['best_s']:.3f} | {r['median_s']:.3f} | "
              f"{r['mpix_s']:.3f} | {mem:.0f} | {fmt(r['psnr_db'], '.1f')} |")

    def ratio(peer_name, t=0):
        vals = []
        for s in sizes:
            mine, theirs = pick("ours", s, t), pick(peer_name, s, t)
            if mine and theirs:
                vals.append(theirs["best_s"] / mine["best_s"])
        return statistics.median(vals) if vals else None

    psnrs = [r["psnr_db"] for s in sizes if (r := pick("ours", s, 0)) and r["psnr_db"] is not None]
    big = max(sizes)
    mine, theirs = pick("ours", big, -1), pick("realesrganer", big, 0)
    key = "gpu_peak_mb" if gpu else "peak_rss_mb"
    mem_ratio = mine[key] / theirs[key] if mine and theirs and theirs[key] else None
    tiled = ratio("realesrganer", tile)
    def ratio_of(slow, fast) -> float | None:
        """Median over sizes of slow's best seconds / fast's, untiled; ``slow``/``fast`` are
        (method, dtype) pairs."""
        vals = [x["best_s"] / y["best_s"] for sz in sizes
                if (x := pick(slow[0], sz, 0, slow[1])) and (y := pick(fast[0], sz, 0, fast[1]))]
        return statistics.median(vals) if vals else None

    def worst_psnr(method, dt, key="psnr_vs_ours_default_db") -> float | None:
        vals = [r[key] for sz in sizes if (r := pick(method, sz, 0, dt)) and key in r]
        return min(vals) if vals else None

    ours32 = ("ours", "fp32") if (gpu or native_bf16) else ("ours", "")
    ncnn32 = ("ncnn", "")
    extra = (f" fp32_vs_ncnn_fp32={fmt(ratio_of(ncnn32, ours32))}"
             f" openvino_fp32_vs_ours_fp32={fmt(ratio_of(ours32, ('openvino', 'fp32')))}"
             f" psnr_openvino_fp32_vs_ours_db={fmt(worst_psnr('openvino', 'fp32', 'psnr_vs_ours_same_dtype_db'), '.1f')}")
    if native_bf16:
        extra += (f" default_speedup_over_fp32={fmt(ratio_of(ours32, ('ours', '')))}"
                  f" psnr_fp32_vs_default_db={fmt(worst_psnr('ours', 'fp32'), '.1f')}"
                  f" default_vs_ncnn_bf16={fmt(ratio_of(('ncnn', 'bf16'), ('ours', '')))}"
                  f" openvino_default_vs_ours_default={fmt(ratio_of(('ours', ''), ('openvino', '')))}")
    print(f"\ntiled at {tile}: vs RealESRGANer {fmt(tiled)}×, vs ncnn {fmt(ratio('ncnn', tile))}×")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print(f"summary: vs_realesrganer={fmt(ratio('realesrganer'))} vs_ncnn={fmt(ratio('ncnn'))} "
          f"psnr_vs_realesrganer_db={fmt(min(psnrs) if psnrs else None, '.1f')} "
          f"peak_{'gpu' if gpu else 'rss'}_ratio={fmt(mem_ratio)}" + extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
