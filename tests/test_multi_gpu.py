"""Two GPUs (Kaggle T4 ×2) and SDXL base+refiner on a 15 GB T4, tested on a CPU.

No GPU here: device parsing runs against a monkeypatched ``torch.cuda`` (two fake T4s), and the
multi-device paths run with two CPU "devices" (each with its own pipeline slot and thread), which
proves the splitting, ordering, seeds, slots, pipelining and progress — not CUDA speed or memory.
"""
from __future__ import annotations

import logging
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import psnr

import pipeline_lib as pl
from pipeline_lib import compose, multi_gpu
from pipeline_lib import devices as devices_mod
from pipeline_lib.cli import build_parser, main as cli_main
from pipeline_lib.errors import InvalidParameterError
from pipeline_lib.generate import api as gen_api
from pipeline_lib.generate import pipeline as gp
from pipeline_lib.generate.presets import PRESETS, Preset
from pipeline_lib.memory import MemoryPlan
from pipeline_lib.refine_plan import GIB, generation_peak_bytes

FAST = dict(steps=2, width=64, height=64, progress=False)
T4_BYTES = 15_835_660_288  # what torch reports for a T4 (14.7 GiB)


def arr(img):
    return np.asarray(img, dtype=np.int16)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on Kaggle's T4 ×2 (GPU ``bad`` lacks kernels when listed)."""
    bad: set[int] = set()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    reason = lambda i=0: "Tesla P100 (sm_60) is not supported: running on the CPU instead" \
        if i in bad else None  # noqa: E731
    monkeypatch.setattr(devices_mod, "unsupported_gpu_reason", reason)
    monkeypatch.setattr(multi_gpu, "unsupported_gpu_reason", reason)
    return bad


@pytest.fixture
def cpu_pair(monkeypatch):
    """Two CPU stand-ins for two GPUs, in generate() and text_to_image()."""
    pick = lambda device, devices: ["cpu", "cpu"] if devices is not None else [device]  # noqa: E731
    monkeypatch.setattr(gen_api, "choose_devices", pick)
    monkeypatch.setattr(compose, "choose_devices", pick)
    yield
    pl.unload_pipeline()


# ------------------------------------------------------------------ devices
def test_resolve_devices_forms_and_auto(two_gpus):
    assert multi_gpu.resolve_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert multi_gpu.resolve_devices(["cuda:1", torch.device("cuda", 0)]) == ["cuda:1", "cuda:0"]
    assert multi_gpu.usable_gpus() == ["cuda:0", "cuda:1"]
    assert multi_gpu.resolve_devices(None) == multi_gpu.resolve_devices("auto") == ["cuda:0", "cuda:1"]
    two_gpus.add(1)  # a GPU this torch has no kernels for is not "usable": auto takes one
    assert multi_gpu.usable_gpus() == ["cuda:0"]
    assert multi_gpu.resolve_devices("auto") == ["cuda:0"]
    with pytest.raises(InvalidParameterError, match=r"devices entry 'cuda:1': device 'cuda:1'"):
        multi_gpu.resolve_devices("cuda:0,cuda:1")


@pytest.mark.parametrize("devices, message", [
    ("cuda:0,gpu1", r"devices entry 'gpu1': unknown device 'gpu1'; use 'cpu', 'cuda', 'cuda:N'"),
    ("cuda:0,cuda:2", r"devices entry 'cuda:2': device 'cuda:2' does not exist: this machine "
                      r"has 2 CUDA device\(s\)"),
    ("cuda,cuda:0", r"devices names cuda:0 twice"),
    (["cuda:1", "cuda:1"], r"devices names cuda:1 twice"),
    ("cuda:0,,cuda:1", r"has an empty entry"),
    (3, r"devices must be a list or a comma-separated string; use 'auto'.*got int"),
    ([], r"devices is empty"),
])
def test_resolve_devices_errors_name_the_bad_entry(two_gpus, devices, message):
    with pytest.raises(InvalidParameterError, match=message):
        multi_gpu.resolve_devices(devices)


def test_no_gpu_here_cuda_entries_fail_and_auto_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert multi_gpu.usable_gpus() == [] and multi_gpu.resolve_devices("auto") == ["cpu"]
    with pytest.raises(InvalidParameterError, match=r"devices entry 'cuda:0'.*no CUDA GPU"):
        multi_gpu.resolve_devices("cuda:0,cuda:1")
    with pytest.raises(InvalidParameterError, match=r"pass device= or devices=, not both"):
        pl.generate("x", model="tiny-random", device="cpu", devices="cpu")


# ------------------------------------------------------------------ runner, pipeline, progress
def test_split_and_parallel_runner_keep_order_and_raise():
    assert multi_gpu.split_counts(5, 2) == [3, 2] and multi_gpu.split_counts(1, 2) == [1]
    assert multi_gpu.split_counts(4, 2) == [2, 2]
    both = threading.Barrier(2, timeout=10)  # passes only when both calls run at once

    def work(index, device):
        both.wait()
        time.sleep(0.05 * (1 - index))  # the first finishes last: order must still hold
        return index, device, threading.current_thread().name

    out = multi_gpu.run_on_devices(work, ["cpu", "mps"])
    assert [o[:2] for o in out] == [(0, "cpu"), (1, "mps")] and out[0][2] != out[1][2]

    def fails(index, device):
        if index == 1:
            raise ValueError("device 1 failed")
        return index

    with pytest.raises(ValueError, match="device 1 failed"):
        multi_gpu.run_on_devices(fails, ["cpu", "cpu"])


def test_pipelined_overlaps_stages_keeps_order_and_raises():
    started = {i: threading.Event() for i in range(4)}
    overlapped = []

    def produce(i):
        started[i].set()
        return i * 10

    def consume(v):
        k = v // 10
        if k + 1 in started:  # stage 1 makes item k+1 while stage 2 still holds item k
            overlapped.append(started[k + 1].wait(timeout=10))
        return v + 1

    assert multi_gpu.pipelined(range(4), produce, consume) == [1, 11, 21, 31]
    assert overlapped == [True, True, True]

    def bad_produce(i):
        if i == 2:
            raise RuntimeError("generation failed at 2")
        return i

    with pytest.raises(RuntimeError, match="generation failed at 2"):
        multi_gpu.pipelined(range(4), bad_produce, lambda v: v)
    with pytest.raises(KeyError):
        multi_gpu.pipelined(range(4), lambda i: i, lambda v: {}[v])


def test_progress_sum_total_is_right_from_the_first_report():
    seen = []
    with multi_gpu.ProgressSum(3, lambda d, t: seen.append((d, t))) as total:
        total.part(1)(1, 4)
        total.part(0)(2, 4)
        total.part(2)(4, 4)
        total.part(0)(4, 4)
        total.part(1)(4, 4)
    assert seen == [(1, 12), (3, 12), (7, 12), (9, 12), (12, 12)]


# ------------------------------------------------------------------ generate over two devices
def test_generate_split_matches_one_device_seeds_and_order(sd_dir, cpu_pair, caplog):
    single = pl.generate("a lighthouse", model=sd_dir, seed=40, num_images=3, **FAST)
    reports = []
    with caplog.at_level(logging.INFO, logger="pipeline_lib"):
        split = pl.generate("a lighthouse", model=sd_dir, seed=40, num_images=3,
                            devices=["cuda:0", "cuda:1"], on_progress=lambda d, t: reports.append((d, t)),
                            **FAST)
    assert [g.seed for g in split] == [40, 41, 42] == [g.params["seed"] for g in split]
    for a, b in zip(single, split):  # batched matmuls may round a last bit differently
        assert psnr(arr(a.image), arr(b.image)) >= 40
    assert psnr(arr(split[0].image), arr(split[1].image)) < 30  # different seeds, different images
    assert "generating 3 images on cpu, cpu (2/1 each)" in caplog.text
    # each device has its own cached pipeline (its slot), both kept
    assert gp.current_pipeline(1) is not None and gp.current_pipeline(1) is not gp.current_pipeline(0)
    # one progress total over both devices: 2 steps on each
    assert reports[-1] == (4, 4) and all(t == 4 for _, t in reports)
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)


def test_text_to_image_pipelined_equals_sequential(sd_dir, cpu_pair, caplog):
    opts = dict(model=sd_dir, upscaler="realesr-animevideov3", size=128, seed=7, num_images=2,
                **FAST)
    sequential = pl.text_to_image("a fox", **opts)
    reports = []
    with caplog.at_level(logging.INFO, logger="pipeline_lib"):
        piped = pl.text_to_image("a fox", devices="cuda:0,cuda:1",
                                 on_progress=lambda d, t: reports.append((d, t)), **opts)
    assert "generating on cpu, upscaling on cpu, pipelined over 2 images" in caplog.text
    assert [g.seed for g in piped] == [7, 8]
    for a, b in zip(sequential, piped):
        assert a.image.size == b.image.size == (128, 128)
        assert psnr(arr(a.image), arr(b.image)) >= 40
        assert b.params["upscaler"] == "realesr-animevideov3" and b.params["upscale_size"] == "128x128"
    assert reports[-1] == (4, 4)


def test_text_to_image_pipelined_refine_runs_on_the_second_slot(cpu_pair, caplog):
    opts = dict(model="tiny-random", upscaler="realesr-animevideov3", size=96, seed=3, num_images=2,
                refine_strength=0.3, **FAST)
    sequential = pl.text_to_image("a fox", **opts)
    with caplog.at_level(logging.INFO, logger="pipeline_lib"):
        piped = pl.text_to_image("a fox", devices="auto", **opts)
    assert "generating on cpu, upscaling and refining on cpu, pipelined over 2 images" in caplog.text
    for a, b in zip(sequential, piped):
        assert psnr(arr(a.image), arr(b.image)) >= 40 and b.params["refine_strength"] == 0.3
    assert gp.current_pipeline(1) is not None  # the refiner's copy lives in slot 1


# ------------------------------------------------------------------ SDXL base + refiner
def _fake_t4(monkeypatch, total=T4_BYTES):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda dev: types.SimpleNamespace(total_memory=total))


def test_parks_idle_unet_only_when_both_would_not_fit(monkeypatch):
    def loaded(preset, profile="fast", offload=None):
        return gp.Loaded(key=(), pipe=None, plan=MemoryPlan(profile, "cuda:0", "float16", offload),
                         source="x", preset=PRESETS[preset], scheduler="default")

    _fake_t4(monkeypatch)
    assert gp.parks_idle_unet(loaded("sdxl-base-refiner"))  # 15.2 GiB both vs a 14.7 GiB T4
    assert not gp.parks_idle_unet(loaded("sdxl-base"))  # no refiner
    assert not gp.parks_idle_unet(loaded("sdxl-base-refiner", "balanced", "model"))  # offload does it
    cpu = gp.Loaded(key=(), pipe=None, plan=MemoryPlan("cpu", "cpu", "float32"), source="x",
                    preset=PRESETS["sdxl-base-refiner"], scheduler="default")
    assert not gp.parks_idle_unet(cpu)
    _fake_t4(monkeypatch, 80 * GIB)  # an A100 80 GB holds both
    assert not gp.parks_idle_unet(loaded("sdxl-base-refiner"))


def test_refiner_pair_keeps_one_unet_resident(sdxl_dir, monkeypatch):
    """What this proves on a CPU: the order of the moves — at every UNet forward, the UNet
    running was last sent to the work device and the other to the park device — that the same
    module objects are moved (no reload) and the pixels do not change. The park device is
    relabelled "meta" and the spy does not really move there, since a CPU has only one device."""
    pl.register_preset(Preset("tiny-xl-pair", sdxl_dir, "StableDiffusionXLPipeline", steps=2,
                              guidance=5.0, size=(64, 64), multiple=64, refiner=sdxl_dir,
                              high_noise_frac=0.5), replace=True)
    try:
        first = pl.generate("a fox", model="tiny-xl-pair", seed=8, progress=False)[0]
        loaded = gp.current_pipeline()
        unets = {"base": loaded.pipe.unet, "refiner": loaded.refiner.unet}
        where = {name: "cpu" for name in unets}
        events = []
        for name, unet in unets.items():
            real_to = unet.to

            def spy(*args, _name=name, _real=real_to, **kw):
                dev = str(args[0] if args else kw.get("device", "cpu"))
                where[_name] = dev
                events.append(("to", _name, dev))
                return unet if dev == "meta" else _real(*args, **kw)

            monkeypatch.setattr(unet, "to", spy)
            unet.register_forward_pre_hook(
                lambda m, a, _name=name: events.append(("run", _name, dict(where))))
        monkeypatch.setattr(gp, "PARK_DEVICE", "meta")
        monkeypatch.setattr(gp, "parks_idle_unet", lambda loaded: True)
        again = [pl.generate("a fox", model="tiny-xl-pair", seed=8, progress=False)[0]
                 for _ in range(2)]
        runs = [e for e in events if e[0] == "run"]
        assert {r[1] for r in runs} == {"base", "refiner"}
        for _, name, state in runs:
            other = "refiner" if name == "base" else "base"
            assert state[name] == "cpu" and state[other] == "meta", (name, state)
        # out first, then in: within each swap the idle UNet leaves before the other arrives
        moves = [e for e in events if e[0] == "to"]
        assert moves[:4] == [("to", "refiner", "meta"), ("to", "base", "cpu"),
                             ("to", "base", "meta"), ("to", "refiner", "cpu")]
        assert loaded.pipe.unet is unets["base"] and loaded.refiner.unet is unets["refiner"]
        assert gp.current_pipeline() is loaded and loaded.resident == "refiner"
        assert all(np.array_equal(arr(first.image), arr(a.image)) for a in again)
    finally:
        PRESETS.pop("tiny-xl-pair")
        pl.unload_pipeline()


# ------------------------------------------------------------------ planned peaks
def test_planned_peaks_per_preset_fit_a_t4():
    rows = {r["name"]: r["planned_peak_gib"] for r in pl.list_presets()}
    real = {k: v for k, v in rows.items() if PRESETS[k].repo != "built-in"}
    assert all(isinstance(v, float) and 2 < v < 15 for v in real.values()), real
    assert rows["tiny-random"] is None
    assert rows["sdxl-base"] > rows["sdxl-turbo"] > rows["absolute-reality"] > rows["sd-1.5"]
    assert rows["sdxl-base"] > 2 * rows["sd-1.5"]
    # base+refiner with one UNet resident plans like the base alone; both resident would not fit
    pair = PRESETS["sdxl-base-refiner"]
    assert rows["sdxl-base-refiner"] == rows["sdxl-base"] == 8.8
    both = generation_peak_bytes(pair, both_unets=True)
    assert round(both / GIB, 1) == 13.1 and generation_peak_bytes(pair, memory="fast",
                                                                  both_unets=True) > T4_BYTES
    # from the parameter table: 2 bytes per fp16 weight, more images → more activations
    assert generation_peak_bytes("sdxl", bytes_per_param=4) > generation_peak_bytes("sdxl")
    assert generation_peak_bytes("sd15", num_images=4) > generation_peak_bytes("sd15")
    with pytest.raises(InvalidParameterError, match="memory must be 'fast', 'balanced' or 'low'"):
        generation_peak_bytes("sd15", memory="auto")


def test_readme_peak_table_matches_list_presets():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("<!-- planned-peaks -->")[1]
    table = {}
    for line in section.splitlines():
        cells = [c.strip(" `") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].endswith("GiB"):
            table[cells[0]] = float(cells[1].split()[0])
    # the shipped presets (Hub repos); other tests in this process register tiny local ones
    expected = {r["name"]: r["planned_peak_gib"] for r in pl.list_presets()
                if r["planned_peak_gib"] is not None and not Path(str(r["repo"])).exists()}
    assert len(expected) >= 10
    assert table == expected


# ------------------------------------------------------------------ CLI
def test_cli_devices_flag(tmp_path, cpu_pair, capsys):
    args = build_parser().parse_args(["generate", "x", "-o", "o", "--devices", "cuda:0,cuda:1"])
    assert args.devices == "cuda:0,cuda:1" and args.device is None
    assert build_parser().parse_args(["generate", "x", "-o", "o"]).devices is None
    assert cli_main(["generate", "a fox", "-m", "tiny-random", "-o", str(tmp_path), "-n", "2",
                     "--seed", "5", "--devices", "cuda:0,cuda:1", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "seed=5" in out and "seed=6" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["5.png", "6.png"]


def test_cli_bad_devices_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["generate", "x", "-m", "tiny-random", "-o", str(tmp_path), "--devices",
                     "cuda:0,gpu1"]) == 2
    assert "devices entry" in capsys.readouterr().err
