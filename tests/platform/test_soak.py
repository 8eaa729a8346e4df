"""Soak: mixed load for a fixed time. Warm invocations of the warm function go through both gateway replicas
all along, while another function is deployed, invoked cold through a gateway (no instance yet: the
gateway holds the request and Morty provisions one), and deleted, again and again.

It asserts what a soak guards: warm traffic keeps succeeding (≥ 99.9 %, no request without an answer)
through every deploy, cold start and delete; every cycle completes (ready, a cold 200, and the function's
route gone once it is deleted); and the services' open file descriptors end where they started. The summary
of errors and latency percentiles per time window is printed and written to `soak-summary.md` in the test's
directory. Quick form: 40 s; `--full`: 30 minutes.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ._load import Load, Outcome, summary
from ._platform import Platform, Service
from ._record import record, share
from .conftest import LONG_TIMEOUT_S, Deployed, deploy
from .test_leaks import FD_SLACK, _usage

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(LONG_TIMEOUT_S)]
WARM_RATE = 10.0
COLD_TIMEOUT = 180.0


@dataclass(frozen=True)
class Cycle:
    name: str
    deploy_s: float
    cold_ms: float
    cold_status: int
    delete_s: float


async def _cycle(platform: Platform, n: int) -> Cycle:
    """Create, deploy, invoke cold through a gateway replica, delete: one function's whole life."""
    name = f"soak-{n}"
    gateway = platform.gateways[n % len(platform.gateways)]
    async with platform.api() as api, httpx.AsyncClient(timeout=COLD_TIMEOUT, trust_env=False) as client:
        started = time.monotonic()
        created = await api.post(
            "/v1/functions", json={"name": name, "runtime": "python3.11", "isolation": "container", "memory_mib": 128}
        )
        assert created.status_code == 201, created.text
        await deploy(api, name, "1.0.0")
        deployed = time.monotonic()
        url = f"{platform.proxy_url(gateway)}/fn/{name}"
        # Asked of the management API: a request to the route would itself be the cold start.
        await _until_route(platform, gateway, name, present=True)
        cold_started = time.monotonic()
        answer = await client.get(url, params={"n": str(n)})
        cold_ms = (time.monotonic() - cold_started) * 1000
        assert answer.status_code == 200 and answer.json()["n"] == str(n), answer.text
        deleting = time.monotonic()
        deleted = await api.delete(f"/v1/functions/{name}")
        assert deleted.status_code == 200, deleted.text
        await _until_route(platform, gateway, name, present=False)
        assert (await client.get(url)).status_code == 404
        return Cycle(name, deployed - started, cold_ms, answer.status_code, time.monotonic() - deleting)


async def _until_route(platform: Platform, gateway: Service, function: str, *, present: bool) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    async with platform.admin(gateway) as admin:
        while loop.time() < deadline:
            found = (await admin.get(f"/v1/routes/fn.{function}")).status_code == 200
            if found == present:
                # The replica's workers have applied it too (a replica follows the shared database).
                synced = await admin.get("/v1/sync", params={"timeout_s": 30})
                assert synced.status_code == 200, synced.text
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"route of {function} {'not added' if present else 'not removed'} within 30 s")


def _percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _windows(outcomes: list[Outcome], start: float, width: float) -> list[dict[str, str | int]]:
    """Per time window of `width` seconds: requests, those not answered 200, and latency percentiles."""
    buckets: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        buckets.setdefault(int((outcome.at - start) // width), []).append(outcome)
    rows: list[dict[str, str | int]] = []
    for index in sorted(buckets):
        bucket = buckets[index]
        ms = sorted(o.seconds * 1000 for o in bucket)
        row: dict[str, str | int] = {
            "window (s)": f"{index * width:.0f}-{(index + 1) * width:.0f}",
            "requests": len(bucket),
            "not 200": sum(1 for o in bucket if o.status != 200),
        }
        rows.append(row | {f"p{q} ms": f"{_percentile(ms, q):.1f}" for q in (50, 95, 99)})
    return rows


def _table(rows: list[dict[str, str | int]]) -> list[str]:
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + [
        "| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows
    ]


async def test_mixed_load_soak(platform: Platform, deployed: Deployed, full: bool, tmp_path: Path) -> None:
    duration = 1800.0 if full else 40.0
    load = Load(deployed.paths, rate=WARM_RATE, duration=duration, timeout=10).start()
    started = time.monotonic()
    cycles: list[Cycle] = [await _cycle(platform, 0)]
    # Flat after warm-up: the first cycle under load grows the services' connection pools to their working size.
    fds_before = {name: fds for name, (fds, _) in _usage(platform).items()}
    while time.monotonic() - started < duration:
        cycles.append(await _cycle(platform, len(cycles)))
    outcomes = load.wait()

    warm_ok = sum(1 for o in outcomes if o.status == 200)
    windows = _windows(outcomes, started, 60.0 if full else 10.0)
    lines = [
        f"# Soak: {duration:.0f} s of mixed load",
        "",
        f"Warm invocations through both gateways at {WARM_RATE:.0f}/s: {summary(outcomes)}",
        "",
        *_table(windows),
        "",
        "| cycle | deploy s | cold start ms | cold status | delete → route gone s |",
        "|---|---|---|---|---|",
        *(f"| {c.name} | {c.deploy_s:.1f} | {c.cold_ms:.0f} | {c.cold_status} | {c.delete_s:.1f} |" for c in cycles),
    ]
    report = "\n".join(lines) + "\n"
    (tmp_path / "soak-summary.md").write_text(report)
    print(report)

    assert cycles, "no deploy/cold start/delete cycle completed"
    assert all(o.status is not None for o in outcomes), [o for o in outcomes if o.status is None][:3]
    assert warm_ok >= 0.999 * len(outcomes), summary(outcomes)
    assert len(outcomes) == int(WARM_RATE * duration)
    fds_after = {name: fds for name, (fds, _) in _usage(platform).items()}
    grown = {
        name: (fds_before[name], fds_after[name])
        for name in fds_before
        if fds_after[name] > fds_before[name] + FD_SLACK
    }
    assert not grown, f"open file descriptors grew during the soak: {grown}"
    record(
        "soak",
        f"Soak: {duration:.0f} s of mixed load",
        full=full,
        figures={
            f"warm invocations through both gateways at {WARM_RATE:.0f}/s, 200": share(warm_ok, len(outcomes)),
            "deploy / cold start / delete cycles": len(cycles),
            "deploy s (median)": round(statistics.median(c.deploy_s for c in cycles), 1),
            "cold start ms (median)": round(statistics.median(c.cold_ms for c in cycles)),
            "warm latency per window": windows,
        },
    )
