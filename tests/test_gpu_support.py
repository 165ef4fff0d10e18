"""A GPU the installed torch has no kernels for (Kaggle's P100 under a torch without sm_60):
one warning naming the GPU, its sm_XX and the fix, and the work runs on the CPU."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline_lib as pl
from pipeline_lib import devices, gpu_support, notebook


@pytest.fixture
def p100(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list",
                        lambda: ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "compute_90"])

    def no_cuda_work(*a, **k):
        raise AssertionError("CUDA work on an unsupported GPU")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda_work)
    gpu_support._reason_from_arch_list.cache_clear()
    yield
    gpu_support._reason_from_arch_list.cache_clear()


@pytest.mark.parametrize("cap, archs, ok", [
    ((7, 5), ["sm_75"], True), ((8, 6), ["sm_80"], True), ((8, 0), ["sm_86"], False),
    ((6, 0), ["sm_70", "compute_70"], False), ((9, 0), ["sm_80", "compute_80"], True),
    ((6, 0), ["sm_50", "sm_60"], True), ((12, 0), ["sm_90"], False),
])
def test_arch_rules(cap, archs, ok):
    assert gpu_support.arch_supported(cap, archs) is ok


def test_p100_upscale_runs_on_the_cpu_with_one_warning(p100, caplog):
    caplog.set_level(logging.WARNING, "pipeline_lib")
    img = Image.new("RGB", (12, 10), (30, 140, 60))
    res = pl.upscale(img, "realesr-animevideov3", scale=2, progress=False, full_result=True)
    assert res.device == "cpu" and res.image.size == (24, 20)
    ref = pl.upscale(img, "realesr-animevideov3", scale=2, device="cpu", progress=False)
    assert np.array_equal(np.asarray(res.image), np.asarray(ref))
    warnings = [r.getMessage() for r in caplog.records if "P100" in r.getMessage()]
    assert len(warnings) == 1
    assert "sm_60" in warnings[0] and "download.pytorch.org/whl/cu126" in warnings[0]


def test_naming_cuda_on_a_p100_is_an_error_with_the_fix(p100):
    with pytest.raises(pl.InvalidParameterError, match=r"Tesla P100.*sm_60.*cu126"):
        devices.resolve_device("cuda")


def test_print_system_shows_the_unsupported_gpu(p100, capsys):
    notebook.print_system()
    out = capsys.readouterr().out
    assert "Tesla P100-PCIE-16GB — NOT USABLE" in out and "sm_60" in out


def test_no_kernel_image_at_run_time_reruns_on_the_cpu(monkeypatch, caplog):
    """The arch list looked fine, the first real op said otherwise: same image, from the CPU."""
    from pipeline_lib.upscale import api

    real_plan = api._plan
    calls = []

    def plan(*args):
        p = real_plan(*args)
        calls.append(args[8])  # the device asked for
        if args[8] is None:  # pretend auto chose a GPU whose kernels are missing
            def broken(batch):
                raise RuntimeError("CUDA error: no kernel image is available for execution on "
                                   "the device")
            p = api._Plan(api.Upscaler(**{**p.up.__dict__, "device": "cuda:0", "run": broken}),
                          broken, p.fallback, p.out_size, p.passes, p.tile, p.overlap)
        return p

    monkeypatch.setattr(api, "_plan", plan)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(gpu_support, "_FAILED_AT_RUN_TIME", {})
    caplog.set_level(logging.WARNING, "pipeline_lib")
    img = Image.new("RGB", (12, 10), (30, 140, 60))
    res = pl.upscale(img, "realesr-animevideov3", scale=2, progress=False, full_result=True)
    assert calls == [None, "cpu"] and res.device == "cpu" and res.image.size == (24, 20)
    assert "no kernel image" in caplog.text and "cu126" in caplog.text
    assert gpu_support.unsupported_gpu_reason(0) is not None  # later auto choices take the CPU
