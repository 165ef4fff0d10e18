"""A real browser on the notebook app: Voila serves notebooks/local.ipynb in test mode on a random
127.0.0.1 port, Playwright drives Debian's Chromium (``apt-get install -y chromium-headless-shell``).

Outside CI (``CI`` unset) the tests skip, saying why, when Chromium, Voila or Playwright is missing;
in CI they must run. ``PIPELINE_LIB_CHROMIUM`` names another Chromium binary;
``PIPELINE_LIB_TEST_ARTIFACTS`` the folder for screenshots (default: test-artifacts/browser).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "local.ipynb"
CHROMIUM_NAMES = ("chromium-headless-shell", "chromium", "chromium-browser")
APT_HINT = "apt-get install -y chromium-headless-shell"
# what the probe of this kind of machine found necessary on a closed network (see the brief)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"browser test in CI: {what}", pytrace=False)
    pytest.skip(f"browser test skipped outside CI: {what}")


def chromium_path() -> str:
    named = os.environ.get("PIPELINE_LIB_CHROMIUM")
    if named:
        if not Path(named).is_file():
            _missing(f"PIPELINE_LIB_CHROMIUM={named} is not a file")
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    _missing(f"no Chromium binary ({', '.join(CHROMIUM_NAMES)}) on PATH; install it with `{APT_HINT}`")
    raise AssertionError("unreachable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_path() -> str:
    """The data folder holding the widgets' front-end code (jupyterlab_widgets installs it under
    <prefix>/share/jupyter, which Voila finds on its own only when it runs from that prefix)."""
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    spec = importlib.util.find_spec("jupyterlab_widgets")
    if spec and spec.origin:
        prefix_data = Path(spec.origin).resolve().parents[4] / "share" / "jupyter"
        if (prefix_data / "labextensions").is_dir():
            paths.append(str(prefix_data))
    return os.pathsep.join(paths)


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"voila did not listen within {seconds:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("PIPELINE_LIB_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def voila_url(tmp_path_factory, artifacts) -> str:
    """Voila serving notebooks/local.ipynb in the notebooks' test mode (tiny offline models)."""
    for module in ("voila", "playwright"):
        if importlib.util.find_spec(module) is None:
            _missing(f"the Python package {module!r} is not installed (pip install -r "
                     "requirements-test.txt)")
    chromium_path()  # skip before starting a server that would not be used
    port = _free_port()
    env = dict(os.environ, PIPELINE_LIB_NOTEBOOK_TEST="1", HF_HUB_OFFLINE="1",
               PIPELINE_LIB_OFFLINE="1", MPLBACKEND="Agg", JUPYTER_PATH=_jupyter_path(),
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.setdefault("PIPELINE_LIB_CACHE", str(ROOT / ".pytest_cache" / "pipeline_lib_cache"))
    log = artifacts / "voila.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--no-browser",
             "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_port(port, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def browser(voila_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()
