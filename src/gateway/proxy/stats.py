"""Counters kept by each worker, cheap to update on the hot path (dict increments, one bisect) and
shipped to the management process, which exposes the sum over workers on /metrics."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Stats:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list[float]] = {}
        self.cold_starts: dict[str, int] = {}
        self.records_dropped = 0
        self.records_sent = 0

    def observe(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            # One slot per bucket, then +Inf, then the sum.
            histogram = self.latency[route] = [0.0] * (len(BUCKETS) + 2)
        histogram[bisect_left(BUCKETS, seconds)] += 1
        histogram[-1] += seconds

    def cold_start(self, route: str) -> None:
        self.cold_starts[route] = self.cold_starts.get(route, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Cumulative since the worker started, so a lost report loses nothing."""
        return {
            "requests": [[route, status, count] for (route, status), count in self.requests.items()],
            "latency": {route: list(values) for route, values in self.latency.items()},
            "cold_starts": dict(self.cold_starts),
            "records_dropped": self.records_dropped,
            "records_sent": self.records_sent,
        }
