"""One progress figure for a whole job: the library's ``on_progress(done, total)`` calls of each
part (denoising steps; the tiles of every upscale pass, per picture) become a fraction, a time
left and a line of text. No ipywidgets here: the view only copies these numbers onto its bar.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

__all__ = ["Progress", "JobProgress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``7.5`` → ``"7.5 s"``, ``75`` → ``"1:15"``, ``3725`` → ``"1:02:05"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"


@dataclass
class Progress:
    """Where the running (or last) job stands."""

    fraction: float = 0.0  # of the whole job, 0..1
    done: int = 0  # the last (done, total) the library reported for the current part
    total: int = 0
    seconds_left: float | None = None  # None until two reports make a rate
    elapsed: float = 0.0
    finished: bool = False
    failed: bool = False

    @property
    def percent(self) -> int:
        return int(self.fraction * 100 + 1e-9)

    def text(self) -> str:
        """``"40 % · 0:12 left"``, ``"100 % · 3.2 s"``, ``"failed after 1.0 s"``."""
        if self.failed:
            return f"failed after {format_seconds(self.elapsed)}" if self.elapsed >= 0.05 else "failed"
        if self.finished:
            return f"{self.percent} % · {format_seconds(self.elapsed)}"
        left = f" · {format_seconds(self.seconds_left)} left" if self.seconds_left is not None else ""
        return f"{self.percent} %{left}"


class JobProgress:
    """Tracks a job made of ``parts`` equal parts (e.g. one per picture to upscale).

    ``callback(i)`` is the ``on_progress`` to hand the library for part ``i``; every report moves
    :attr:`state` and calls ``on_update(state)``. The time left is measured from the first report
    on, so a model's loading time (before any step) does not distort it.
    """

    def __init__(self, parts: int = 1, on_update: Callable[[Progress], object] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.parts = max(1, parts)
        self.state = Progress()
        self._on_update = on_update or (lambda _state: None)
        self._clock = clock
        self._start = clock()
        self._first: tuple[float, float] | None = None  # (time, fraction) of the first report

    def callback(self, part: int) -> Callable[[int, int], None]:
        def on_progress(done: int, total: int) -> None:
            self.report(part, done, total)
        return on_progress

    def report(self, part: int, done: int, total: int) -> None:
        """Part ``part`` has done ``done`` of ``total`` units (total may grow between passes)."""
        total = max(int(total), int(done), 1)
        fraction = min(1.0, (part + done / total) / self.parts)
        now = self._clock()
        s = self.state
        s.done, s.total, s.fraction, s.elapsed = int(done), total, fraction, now - self._start
        if self._first is None:
            self._first = (now, fraction)
        elif fraction > self._first[1]:
            rate = (now - self._first[0]) / (fraction - self._first[1])
            s.seconds_left = max(0.0, rate * (1.0 - fraction))
        self._on_update(s)

    def part_done(self, part: int) -> None:
        """Part ``part`` finished (a part whose library call reports nothing still moves the bar)."""
        self.report(part, 1, 1)

    def finish(self, failed: bool = False) -> Progress:
        s = self.state
        s.elapsed, s.seconds_left = self._clock() - self._start, None
        s.finished, s.failed = not failed, failed
        if not failed:
            s.fraction = 1.0
        self._on_update(s)
        return s
