"""A coarse clock for timeouts, advanced by the worker's sweep: the hot path reads an attribute instead
of making a clock call per event."""

from __future__ import annotations

from time import monotonic


class Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = monotonic()

    def tick(self) -> float:
        self.now = monotonic()
        return self.now


CLOCK = Clock()
