"""Several devices at once (Kaggle's "GPU T4 ×2"): which GPUs are usable, the ``devices``
argument parsed and checked, work run on each device in parallel with results kept in order, a
two-stage pipeline (stage 1 on one device feeds stage 2 on another, one item ahead), and one
progress total summed over all of them.

Threads, not processes: the models are loaded once per device in this process, and CUDA
kernels release the GIL, so two GPUs really run at once.

>>> split_counts(5, 2)
[3, 2]
>>> run_on_devices(lambda index, device: (index, device), ["cpu"])
[(0, 'cpu')]
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

from .devices import resolve_device
from .errors import InvalidParameterError
from .gpu_support import unsupported_gpu_reason

__all__ = ["usable_gpus", "resolve_devices", "choose_devices", "split_counts", "device_scope", "run_on_devices",
           "pipelined", "ProgressSum"]

log = logging.getLogger(__name__)

_HOW = "use 'auto', a list such as ['cuda:0', 'cuda:1'] or a string 'cuda:0,cuda:1'"


def usable_gpus() -> list[str]:
    """The CUDA devices this torch can run (``cuda:N``), skipping GPUs it has no kernels for."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count()) if unsupported_gpu_reason(i) is None]


def _entries(devices) -> list:
    if isinstance(devices, str):
        return [d.strip() for d in devices.split(",")]
    if isinstance(devices, (list, tuple)):
        return list(devices)
    raise InvalidParameterError(f"devices must be a list or a comma-separated string; {_HOW}; "
                                f"got {type(devices).__name__}.")


def resolve_devices(devices=None) -> list[str]:
    """The devices to use, normalised (``cuda:N``, ``cpu``, ``mps``), each once.

    None or ``"auto"``: every usable GPU when there are two or more, else the single best
    device. A list or ``"cuda:0,cuda:1"``: each entry checked like ``device`` (an unknown,
    missing or unsupported one raises :class:`InvalidParameterError` naming it); duplicates
    (``"cuda,cuda:0"`` included) are refused.

    >>> resolve_devices("cpu")
    ['cpu']
    """
    if devices is None or (isinstance(devices, str) and devices.strip().lower() == "auto"):
        gpus = usable_gpus()
        return gpus if len(gpus) >= 2 else [str(resolve_device(None))]
    out: list[str] = []
    for item in _entries(devices):
        if item is None or (isinstance(item, str) and not item.strip()):
            raise InvalidParameterError(f"devices {devices!r} has an empty entry; {_HOW}.")
        try:
            dev = resolve_device(item)
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"devices entry {item!r}: {exc}") from None
        name = f"cuda:{dev.index}" if dev.type == "cuda" else str(dev)
        if name in out:
            raise InvalidParameterError(f"devices names {name} twice ({devices!r}); give each "
                                        "device once.")
        out.append(name)
    if not out:
        raise InvalidParameterError(f"devices is empty; {_HOW}.")
    return out


def choose_devices(device, devices) -> list:
    """What a call with both a ``device`` and a ``devices`` argument runs on: ``[device]``
    (None: the best) when ``devices`` is None, else :func:`resolve_devices` of it; both at once
    is an error."""
    if devices is None:
        return [device]
    if device is not None:
        raise InvalidParameterError("pass device= or devices=, not both (devices=['cuda:0', "
                                    "'cuda:1'] runs on both GPUs).")
    return resolve_devices(devices)


def split_counts(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` workers, as even as possible, the first ones taking more;
    workers that would get nothing are left out."""
    base, extra = divmod(total, parts)
    return [n for n in (base + (1 if i < extra else 0) for i in range(parts)) if n]


@contextlib.contextmanager
def device_scope(device) -> Iterator[None]:
    """Make ``device`` the thread's current CUDA device (kernels and caches that take the
    current device then land on it); nothing for other devices."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        with torch.cuda.device(torch.device(device)):
            yield
    else:
        yield


def run_on_devices(fn: Callable[[int, str], object], devices: Sequence[str]) -> list:
    """``[fn(0, devices[0]), fn(1, devices[1]), ...]``, each in its own thread at once; results
    in order. Every call finishes before the first error (in device order) is raised."""
    def call(index: int):
        with device_scope(devices[index]):
            return fn(index, devices[index])

    if len(devices) == 1:
        return [call(0)]
    with ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="pipeline_lib") as pool:
        futures = [pool.submit(call, i) for i in range(len(devices))]
        errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None:
            raise exc
    return [f.result() for f in futures]


def pipelined(items: Sequence, produce: Callable, consume: Callable,
              devices: Sequence = (None, None)) -> list:
    """``[consume(produce(x)) for x in items]`` with ``produce`` on ``devices[0]`` (a worker
    thread) one item ahead of ``consume`` on ``devices[1]`` (this thread): while item *k* is
    consumed, item *k+1* is produced. An error in either stage stops both and is raised."""
    results: queue.Queue = queue.Queue(maxsize=1)  # one finished item waits, no more
    stop = threading.Event()

    def hand_over(entry) -> None:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def producer() -> None:
        try:
            with device_scope(devices[0]):
                for x in items:
                    if stop.is_set():
                        return
                    hand_over((True, produce(x)))
        except BaseException as exc:  # handed to the consumer, which raises it
            hand_over((False, exc))

    worker = threading.Thread(target=producer, name="pipeline_lib-stage1", daemon=True)
    worker.start()
    out = []
    try:
        with device_scope(devices[1]):
            for _ in items:
                ok, value = results.get()
                if not ok:
                    raise value
                out.append(consume(value))
    finally:
        stop.set()
        worker.join()
    return out


class ProgressSum:
    """One progress total over parts that run at once: part *k* reports its own ``(done,
    total)`` through :meth:`part`; the sums go to ``on_progress`` and to one tqdm bar. A part
    that has not reported yet counts with the largest total seen (the parts of one job have
    equal totals), so the total is right from the first report."""

    def __init__(self, parts: int, on_progress: Callable[[int, int], object] | None = None,
                 progress: bool = False, desc: str = "denoise"):
        from tqdm.auto import tqdm

        self.done = [0] * parts
        self.totals: list[int | None] = [None] * parts
        self.on_progress = on_progress
        self.bar = tqdm(total=0, desc=desc, leave=False, disable=not progress)
        self._lock = threading.Lock()

    def sums(self) -> tuple[int, int]:
        known = [t for t in self.totals if t is not None]
        guess = max(known, default=0)
        return sum(self.done), sum(guess if t is None else t for t in self.totals)

    def part(self, index: int) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            with self._lock:  # one report at a time: the sums only grow
                self.done[index], self.totals[index] = done, total
                done_all, total_all = self.sums()
                self.bar.total = total_all
                self.bar.n = done_all
                self.bar.refresh()
                if self.on_progress is not None:
                    self.on_progress(done_all, total_all)

        return report

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> "ProgressSum":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
