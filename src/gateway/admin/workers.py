"""What the management process knows about its data-plane workers: their last reports (applied resource
version, in-flight counts, counters), a wait for "every worker has applied version N", and the
Prometheus collector that sums their counters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from time import monotonic
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.proxy.stats import BUCKETS

STALE_AFTER_S = 5.0


class WorkerRegistry:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.reports: dict[str, tuple[float, dict[str, Any]]] = {}
        self._changed = asyncio.Event()

    def record(self, report: dict[str, Any]) -> None:
        self.reports[str(report["worker"])] = (monotonic(), report)
        signal, self._changed = self._changed, asyncio.Event()
        signal.set()

    def live(self) -> list[dict[str, Any]]:
        now = monotonic()
        return [report for at, report in self.reports.values() if now - at < STALE_AFTER_S]

    def ready_count(self) -> int:
        return sum(1 for report in self.live() if report.get("ready"))

    def applied(self, resource_version: int) -> bool:
        live = [report for report in self.live() if report.get("ready")]
        return len(live) >= self.expected and all(r["resource_version"] >= resource_version for r in live)

    async def wait_applied(self, resource_version: int, timeout_s: float) -> bool:
        deadline = monotonic() + timeout_s
        while not self.applied(resource_version):
            remaining = deadline - monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def in_flight(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, tuple[int, bool]]]]:
        routes: dict[str, dict[str, int]] = {}
        targets: dict[str, dict[str, tuple[int, bool]]] = {}
        for report in self.live():
            held = report.get("held", {})
            unusable = set(report.get("unhealthy", []))
            for name, count in report["in_flight"]["routes"].items():
                entry = routes.setdefault(name, {"in_flight": 0, "held": 0})
                entry["in_flight"] += count
                entry["held"] += held.get(name, 0)
            for key, count in report["in_flight"]["targets"].items():
                service, _, address = key.partition("/")
                previous, usable = targets.setdefault(service, {}).get(address, (0, True))
                targets[service][address] = (previous + count, usable and key not in unusable)
        return routes, targets


class WorkerMetrics(Collector):
    """Sums the workers' cumulative counters at scrape time."""

    def __init__(self, registry: WorkerRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        reports = self.registry.live()
        requests = CounterMetricFamily(
            "gateway_requests", "Requests answered, by route and status", labels=["route", "status"]
        )
        totals: dict[tuple[str, str], float] = {}
        histograms: dict[str, list[float]] = {}
        cold: dict[str, float] = {}
        dropped = 0.0
        sent = 0.0
        for report in reports:
            stats = report["stats"]
            for route, status, count in stats["requests"]:
                key = (route, str(status))
                totals[key] = totals.get(key, 0) + count
            for route, values in stats["latency"].items():
                into = histograms.setdefault(route, [0.0] * len(values))
                for index, value in enumerate(values):
                    into[index] += value
            for route, count in stats["cold_starts"].items():
                cold[route] = cold.get(route, 0) + count
            dropped += stats["records_dropped"]
            sent += stats["records_sent"]
        for (route, status), count in sorted(totals.items()):
            requests.add_metric([route, status], count)
        yield requests
        latency = HistogramMetricFamily(
            "gateway_request_duration_seconds", "Time from request head to response end", labels=["route"]
        )
        for route, values in sorted(histograms.items()):
            cumulative = 0.0
            buckets = []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), values[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, values[-1])
        yield latency
        routes, targets = self.registry.in_flight()
        route_gauge = GaugeMetricFamily("gateway_route_in_flight", "Requests in flight per route", labels=["route"])
        held_gauge = GaugeMetricFamily("gateway_route_held", "Requests held for a cold start", labels=["route"])
        for name, entry in sorted(routes.items()):
            route_gauge.add_metric([name], entry["in_flight"])
            held_gauge.add_metric([name], entry["held"])
        yield route_gauge
        yield held_gauge
        target_gauge = GaugeMetricFamily(
            "gateway_target_in_flight", "Requests in flight per target", labels=["service", "target"]
        )
        for service, entries in sorted(targets.items()):
            for address, (count, _) in sorted(entries.items()):
                target_gauge.add_metric([service, address], count)
        yield target_gauge
        cold_counter = CounterMetricFamily(
            "gateway_cold_starts", "Cold starts (held requests released)", labels=["route"]
        )
        for route, count in sorted(cold.items()):
            cold_counter.add_metric([route], count)
        yield cold_counter
        yield CounterMetricFamily("gateway_records_dropped", "Invocation records dropped", value=dropped)
        yield CounterMetricFamily("gateway_records_sent", "Invocation records delivered", value=sent)
        yield GaugeMetricFamily(
            "gateway_workers_ready", "Workers following the configuration", value=self.registry.ready_count()
        )
