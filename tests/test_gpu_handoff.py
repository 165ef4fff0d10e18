"""The diffusion pipeline steps off the GPU when ncnn's Vulkan (or a big upscale) needs it."""
from __future__ import annotations

import logging

import torch

import pipeline_lib.gpu_guard as gpu_guard
from pipeline_lib.generate import pipeline as gp
from pipeline_lib.memory import MemoryPlan


class FakePipe:
    def __init__(self):
        self.moves = []

    def to(self, device):
        self.moves.append(device)
        return self


def test_diffusion_pipeline_registers_an_evictor_and_moves_to_cpu(monkeypatch, caplog):
    assert gp.move_off_gpu in gpu_guard._EVICTORS
    pipe = FakePipe()
    fake = gp.Loaded(key=("x",), pipe=pipe, plan=MemoryPlan("fast", "cuda:0", "float16"),
                     source="tiny", preset=None, scheduler="default")
    monkeypatch.setattr(gp, "loaded_pipelines", lambda: [fake])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with caplog.at_level(logging.INFO):
        moved = gpu_guard.evict_gpu_models("ncnn Vulkan upscaling")
    assert moved and pipe.moves == ["cpu"] and fake.offloaded_to_cpu
    assert "ncnn Vulkan upscaling" in caplog.text
    assert gpu_guard.evict_gpu_models("again") == []  # already off the GPU: nothing to move


def test_cpu_pipeline_is_left_alone(monkeypatch):
    pipe = FakePipe()
    fake = gp.Loaded(key=("x",), pipe=pipe, plan=MemoryPlan("cpu", "cpu", "float32"),
                     source="tiny", preset=None, scheduler="default")
    monkeypatch.setattr(gp, "loaded_pipelines", lambda: [fake])
    assert gpu_guard.evict_gpu_models("ncnn") == [] and pipe.moves == []


def test_move_off_gpu_only_touches_the_named_device(monkeypatch):
    """Two GPUs (Kaggle T4 ×2): making room on cuda:1 leaves cuda:0's pipeline where it is."""
    pipes = {dev: FakePipe() for dev in ("cuda:0", "cuda:1")}
    fakes = [gp.Loaded(key=(dev,), pipe=pipe, plan=MemoryPlan("fast", dev, "float16"),
                       source="tiny", preset=None, scheduler="default")
             for dev, pipe in pipes.items()]
    monkeypatch.setattr(gp, "loaded_pipelines", lambda: fakes)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert gp.move_off_gpu("an upscaler", device="cuda:1")
    assert pipes["cuda:0"].moves == [] and pipes["cuda:1"].moves == ["cpu"]
    assert not gp.move_off_gpu("again", device="cuda:1")  # already parked
    assert gp.move_off_gpu("everything") and pipes["cuda:0"].moves == ["cpu"]
