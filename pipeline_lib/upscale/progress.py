"""One progress bar for a whole upscale: tqdm for people, ``on_progress`` for front ends."""
from __future__ import annotations

from typing import Callable

__all__ = ["ReportingBar"]


class ReportingBar:
    """A tqdm bar that also tells ``on_progress(done, total)`` about every update."""

    # A disabled tqdm counts nothing, so the count and total are kept here as well.
    def __init__(self, bar, on_progress: Callable[[int, int], object] | None) -> None:
        self.bar, self.on_progress, self.n, self._total = bar, on_progress, 0, bar.total or 0

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = self.bar.total = value

    def refresh(self) -> None:
        self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.n += n
        self.bar.update(n)
        if self.on_progress is not None:
            self.on_progress(self.n, max(self._total, self.n))
