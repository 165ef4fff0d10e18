"""Offline or unreachable Hub: generation fails in seconds with one message that names the repo,
the cache folder and the local alternatives (issue: a new user's first hour, point 3)."""
from __future__ import annotations

import time

import pytest

import pipeline_lib as pl
from pipeline_lib import hub
from pipeline_lib.errors import WeightsError


def test_pipeline_lib_offline_alone_stops_every_download(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("PIPELINE_LIB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=3.0: pytest.fail("probed the network"))
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as err:
        pl.generate("a cat", model="someone/not-cached-model", progress=False)
    msg = str(err.value)
    assert "downloads are off" in msg and "'someone/not-cached-model'" in msg
    assert hub.hub_cache_dir() in msg and "local diffusers folder" in msg and ".safetensors" in msg
    assert "HF_HUB_OFFLINE" in msg  # names the switch, but does not blame it for being set
    assert time.perf_counter() - t0 < 60  # seconds, not retries (generous for a busy CI box)


def test_unreachable_hub_is_one_clear_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("PIPELINE_LIB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    assert hub.hub_reachable(timeout=1.0) is False
    with pytest.raises(WeightsError, match="the Hugging Face Hub cannot be reached") as err:
        pl.generate("a cat", model="someone/not-cached-model", progress=False)
    assert "someone/not-cached-model" in str(err.value)


def test_cached_repo_loads_from_the_cache_when_offline(monkeypatch):
    monkeypatch.setattr(hub, "is_cached", lambda repo, marker="model_index.json": True)
    monkeypatch.setenv("PIPELINE_LIB_OFFLINE", "1")
    assert hub.hub_access("owner/repo") == {"local_files_only": True}
    monkeypatch.delenv("PIPELINE_LIB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub.hub_access("owner/repo") == {}  # online: diffusers may check for updates
