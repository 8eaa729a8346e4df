"""The gateway as real processes: management process + workers, upstream processes, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.gateway.helpers import TOKEN, GatewayProcess, gateway_process, upstream_process, wait_until
from tests.support.postgres import create_database
from tests.support.registry import free_tcp_port
from tests.support.services import served

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
AUTH = {"authorization": f"Bearer {TOKEN}"}


def setup_service(admin: httpx.Client, service: str, targets: list[int], **spec: Any) -> None:
    assert admin.put(f"/v1/services/{service}", json=spec).status_code in (200, 201)
    for port in targets:
        response = admin.post(f"/v1/services/{service}/targets", json={"address": f"127.0.0.1:{port}"})
        assert response.status_code == 201, response.text


def worker_pid(admin: httpx.Client) -> int:
    return int(admin.get("/v1/stats").json()["workers"][0]["pid"])


class Traffic:
    """Keeps `concurrency` clients sending GETs until stopped; remembers every status and upstream."""

    def __init__(self, url: str, path: str = "/", concurrency: int = 4) -> None:
        self.url, self.path, self.concurrency = url, path, concurrency
        self.statuses: Counter[int] = Counter()
        self.upstreams: list[str] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._go = asyncio.Event()
        self._go.set()
        self._in_flight = 0
        self._tasks: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No traffic request in flight inside the block, so the gateway's in-flight counts are the test's."""
        self._go.clear()
        await self.wait_for(lambda: self._in_flight == 0, 10, "traffic paused")
        try:
            yield
        finally:
            self._go.set()

    async def __aenter__(self) -> Traffic:
        self._client = httpx.AsyncClient(base_url=self.url, timeout=10)
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.concurrency)]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._client.aclose()

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._go.wait()
            self._in_flight += 1
            try:
                response = await self._client.get(self.path)
            except httpx.HTTPError as exc:
                self.errors.append(repr(exc))
                continue
            finally:
                self._in_flight -= 1
            self.statuses[response.status_code] += 1
            self.upstreams.append(response.headers.get("x-upstream", "?"))

    async def wait_for(self, condition: Any, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {message}; statuses {dict(self.statuses)} errors {self.errors[:3]}")
            await asyncio.sleep(0.02)


async def test_live_changes_balance_drain_and_restart(tmp_path: Path) -> None:
    with upstream_process("A") as (port_a, _), upstream_process("B") as (port_b, _):
        with gateway_process(tmp_path) as gw, gw.admin_client() as admin:
            setup_service(admin, "web", [port_a])
            assert admin.put("/v1/routes/web", json={"service": "web", "path_prefix": "/"}).status_code == 201
            gw.sync(admin)
            async with Traffic(gw.proxy) as traffic:
                await traffic.wait_for(lambda: traffic.statuses[200] > 20, 10, "traffic through A")
                # A second route and a second target, added while traffic flows.
                assert admin.put("/v1/routes/api", json={"service": "web", "path_prefix": "/api"}).status_code == 201
                setup_service(admin, "web", [port_b])
                gw.sync(admin)
                mark = len(traffic.upstreams)
                await traffic.wait_for(lambda: len(traffic.upstreams) > mark + 400, 20, "400 balanced requests")
                share = Counter(traffic.upstreams[mark : mark + 400])
                assert share["A"] >= 150 and share["B"] >= 150, share
                # Slow requests in flight on both targets, then B is removed: its requests finish.
                async with httpx.AsyncClient(base_url=gw.proxy, timeout=10) as client:

                    def both_busy() -> bool:
                        targets = admin.get("/v1/stats").json()["targets"].get("web", {})
                        return all(targets.get(f"127.0.0.1:{p}", {}).get("in_flight", 0) > 0 for p in (port_a, port_b))

                    # Round-robin spreads them over both targets while no other request is picked in between.
                    async with traffic.paused():
                        slow = [asyncio.create_task(client.get("/slow", params={"seconds": "3"})) for _ in range(6)]
                        await asyncio.sleep(0)
                        await asyncio.to_thread(wait_until, both_busy, 10, "slow requests on both targets", 0.05)
                    response = admin.delete(f"/v1/services/web/targets/127.0.0.1:{port_b}")
                    assert response.status_code == 200
                    gw.sync(admin)
                    mark = len(traffic.upstreams)
                    await traffic.wait_for(lambda: len(traffic.upstreams) > mark + 100, 10, "traffic after removal")
                    # Requests already on their way to B when it was removed may still answer from B.
                    assert set(traffic.upstreams[mark + traffic.concurrency :]) == {"A"}
                    finished = await asyncio.gather(*slow)
                    assert [r.status_code for r in finished] == [200] * 6
                    assert {r.text for r in finished} == {"A", "B"}
            assert set(traffic.statuses) == {200} and not traffic.errors, (traffic.statuses, traffic.errors[:3])
        # Restart on the same database: the configuration is back.
        with gateway_process(tmp_path) as gw, gw.admin_client() as admin:
            routes = {r["name"] for r in admin.get("/v1/routes").json()["items"]}
            assert routes == {"web", "api"}
            response = await asyncio.to_thread(httpx.get, f"{gw.proxy}/api/x")
            assert response.status_code == 200 and response.headers["x-upstream"] == "A"


class Hook:
    """A provisioner hook: records calls, then registers `port` as a target after `delay` (or fails)."""

    def __init__(self, admin_url: str, port: int, *, delay: float = 0.3, status: int = 202, hang: float = 0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.tasks: list[asyncio.Task[None]] = []
        app = FastAPI()

        @app.post("/provision")
        async def provision(request: Request) -> JSONResponse:
            self.calls.append({"body": await request.json(), "auth": request.headers.get("authorization")})
            if hang:
                await asyncio.sleep(hang)
            if status < 300:
                self.tasks.append(asyncio.create_task(self._register(admin_url, port, delay)))
            return JSONResponse({"accepted": True}, status_code=status)

        self.app = app

    async def _register(self, admin_url: str, port: int, delay: float) -> None:
        await asyncio.sleep(delay)
        async with httpx.AsyncClient(base_url=admin_url, headers=AUTH) as admin:
            body = {"address": f"127.0.0.1:{port}", "labels": {"start_path": "restored"}}
            response = await admin.post("/v1/services/fn-hello/targets", json=body)
            assert response.status_code == 201


async def _cold_route(gw: GatewayProcess, hook_url: str, timeout_s: float) -> None:
    with gw.admin_client() as admin:
        assert admin.put("/v1/services/fn-hello", json={}).status_code == 201
        route = {
            "service": "fn-hello",
            "path_prefix": "/fn/hello",
            "labels": {"function": "hello"},
            "provisioner": {"url": hook_url, "token": "hook-token", "timeout_s": timeout_s, "queue_size": 500},
        }
        assert admin.put("/v1/routes/fn-hello", json=route).status_code == 201
        gw.sync(admin)


async def _hundred(url: str) -> tuple[list[httpx.Response], float]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.monotonic()
        responses = await asyncio.gather(*(client.get(f"{url}/fn/hello/run?i={i}") for i in range(100)))
        return list(responses), time.monotonic() - started


async def test_cold_start_calls_the_hook_once_and_releases_all(tmp_path: Path) -> None:
    with upstream_process("fn") as (port, _), gateway_process(tmp_path) as gw:
        hook = Hook(gw.admin, port)
        hook_port = free_tcp_port()
        async with served(hook.app, hook_port):
            await _cold_route(gw, f"http://127.0.0.1:{hook_port}/provision", timeout_s=20)
            responses, _ = await _hundred(gw.proxy)
            assert [r.status_code for r in responses] == [200] * 100
            assert len(hook.calls) == 1
            assert hook.calls[0] == {
                "body": {"route": "fn-hello", "service": "fn-hello", "labels": {"function": "hello"}},
                "auth": "Bearer hook-token",
            }
            # Warm now: no further call.
            assert (await asyncio.to_thread(httpx.get, f"{gw.proxy}/fn/hello")).status_code == 200
            assert len(hook.calls) == 1
            with gw.admin_client() as admin:
                metrics = await asyncio.to_thread(
                    wait_until,
                    lambda: (
                        'gateway_cold_starts_total{route="fn-hello"} 1.0' in admin.get("/metrics").text
                        and admin.get("/metrics").text
                    ),
                    10,
                    "cold start counted",
                )
                assert 'gateway_requests_total{route="fn-hello",status="200"}' in metrics


@pytest.mark.parametrize("failure", ["hook fails", "hook too slow"])
async def test_cold_start_failure_answers_503_within_the_deadline(tmp_path: Path, failure: str) -> None:
    with gateway_process(tmp_path) as gw:
        hook = Hook(gw.admin, 1, status=500) if failure == "hook fails" else Hook(gw.admin, 1, hang=4)
        hook_port = free_tcp_port()
        async with served(hook.app, hook_port):
            await _cold_route(gw, f"http://127.0.0.1:{hook_port}/provision", timeout_s=1.5)
            responses, elapsed = await _hundred(gw.proxy)
            assert [r.status_code for r in responses] == [503] * 100
            assert all(r.headers.get("retry-after") for r in responses)
            # Each request is answered within the deadline (plus scheduling slack on a busy machine).
            slowest = max(r.elapsed.total_seconds() for r in responses)
            assert slowest < 1.5 + 1.0, slowest
            assert elapsed < 1.5 + 5.0, elapsed
            assert len(hook.calls) == 1
            if failure == "hook fails":
                assert "provisioner answered 500" in responses[0].json()["error"]


async def test_killed_target_is_ejected_retried_and_restored(tmp_path: Path) -> None:
    with (
        upstream_process("A") as (port_a, process_a),
        upstream_process("B") as (port_b, _),
        gateway_process(tmp_path) as gw,
        gw.admin_client() as admin,
    ):
        health = {"path": "/healthz", "interval_s": 0.2, "timeout_s": 0.5}
        setup_service(admin, "web", [port_a, port_b], health_check=health, passive={"max_failures": 1}, retries=2)
        assert admin.put("/v1/routes/web", json={"service": "web"}).status_code == 201
        gw.sync(admin)
        async with Traffic(gw.proxy, concurrency=6) as traffic:
            await traffic.wait_for(lambda: {"A", "B"} <= set(traffic.upstreams), 10, "both targets serve")
            process_a.kill()
            process_a.wait()
            mark = len(traffic.upstreams)
            await traffic.wait_for(lambda: len(traffic.upstreams) > mark + 300, 20, "traffic after the kill")

            def a_unusable() -> bool:
                targets = admin.get("/v1/stats").json()["targets"]["web"]
                return not targets[f"127.0.0.1:{port_a}"]["usable"]

            await asyncio.to_thread(wait_until, a_unusable, 10, "A reported unusable")
            assert set(traffic.upstreams[mark + 50 :]) == {"B"}
            with upstream_process("A", port_a):
                mark = len(traffic.upstreams)
                await traffic.wait_for(lambda: "A" in traffic.upstreams[mark:], 15, "A back in rotation")
        assert set(traffic.statuses) == {200} and not traffic.errors, (traffic.statuses, traffic.errors[:3])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _stream_through(gw: GatewayProcess, size: int) -> tuple[int, int]:
    """Upload and download `size` bytes through the gateway; returns (baseline, peak) worker RSS in KiB."""
    with gw.admin_client() as admin:
        pid = worker_pid(admin)
    baseline = peak = _rss_kib(pid)
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_kib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    block = os.urandom(1 << 20)

    async def body() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            sent += len(piece)
            yield piece

    digest = hashlib.sha256()
    for start in range(0, size, len(block)):
        digest.update(block[: min(len(block), size - start)])
    async with httpx.AsyncClient(base_url=gw.proxy, timeout=120) as client:
        echoed = (await client.post("/echo", content=body())).json()
        assert echoed["bytes"] == size and echoed["sha256"] == digest.hexdigest()
        received = 0
        async with client.stream("GET", "/stream", params={"bytes": str(size), "chunk": str(1 << 20)}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        assert received == size
    stop.set()
    await sampler
    return baseline, peak


async def _large_body(tmp_path: Path, size: int) -> None:
    with upstream_process("big") as (port, _), gateway_process(tmp_path) as gw, gw.admin_client() as admin:
        setup_service(admin, "big", [port])
        assert admin.put("/v1/routes/big", json={"service": "big"}).status_code == 201
        gw.sync(admin)
        baseline, peak = await _stream_through(gw, size)
        assert peak - baseline < 32 * 1024, f"worker RSS grew from {baseline} KiB to {peak} KiB"


async def test_large_bodies_stream_with_bounded_memory(tmp_path: Path) -> None:
    await _large_body(tmp_path, 200 * 1024 * 1024)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_one_gigabyte_streams_with_bounded_memory(tmp_path: Path) -> None:
    await _large_body(tmp_path, 1024 * 1024 * 1024)


async def test_graceful_shutdown_finishes_in_flight_requests(tmp_path: Path) -> None:
    with upstream_process("A") as (port, _), gateway_process(tmp_path) as gw, gw.admin_client() as admin:
        setup_service(admin, "web", [port])
        assert admin.put("/v1/routes/web", json={"service": "web"}).status_code == 201
        gw.sync(admin)
        async with httpx.AsyncClient(base_url=gw.proxy, timeout=20) as client:
            slow = asyncio.create_task(client.get("/slow", params={"seconds": "1.5"}))
            await asyncio.to_thread(
                wait_until,
                lambda: admin.get("/v1/stats").json()["routes"].get("web", {}).get("in_flight", 0) == 1,
                10,
                "request in flight",
            )
            gw.process.send_signal(signal.SIGTERM)
            response = await slow
            assert response.status_code == 200 and response.text == "A"
        assert await asyncio.to_thread(gw.process.wait, 20) == 0


async def test_two_workers_follow_the_same_configuration(tmp_path: Path) -> None:
    with upstream_process("A") as (port, _), gateway_process(tmp_path, workers=2) as gw, gw.admin_client() as admin:
        setup_service(admin, "web", [port])
        assert admin.put("/v1/routes/web", json={"service": "web", "path_prefix": "/v"}).status_code == 201
        synced = admin.get("/v1/sync", params={"timeout_s": 20}).json()
        assert synced["workers"] == 2
        pids = {w["pid"] for w in admin.get("/v1/stats").json()["workers"]}
        assert len(pids) == 2
        async with httpx.AsyncClient(base_url=gw.proxy) as client:
            for _ in range(3):
                # New connections each time: SO_REUSEPORT spreads them over both workers.
                results = await asyncio.gather(
                    *(httpx.AsyncClient(base_url=gw.proxy).get("/v/x") for _ in range(20)), return_exceptions=True
                )
                assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results)
            assert (await client.get("/other")).status_code == 404


async def test_replicas_sharing_a_database_stay_in_sync(tmp_path: Path, postgres: str) -> None:
    database = create_database(postgres, f"gw_{os.getpid()}_{free_tcp_port()}")
    with (
        upstream_process("A") as (port, _),
        gateway_process(tmp_path / "one", database=database) as one,
        gateway_process(tmp_path / "two", database=database) as two,
        one.admin_client() as admin_one,
        two.admin_client() as admin_two,
    ):
        setup_service(admin_one, "web", [port])
        created = admin_one.put("/v1/routes/web", json={"service": "web", "path_prefix": "/shared"})
        version = created.json()["resource_version"]
        # The other replica's workers apply the change written through the first one.
        synced = admin_two.get("/v1/sync", params={"resource_version": version, "timeout_s": 20})
        assert synced.status_code == 200, synced.text
        response = await asyncio.to_thread(httpx.get, f"{two.proxy}/shared/x")
        assert response.status_code == 200 and response.headers["x-upstream"] == "A"
        removed = admin_two.delete(f"/v1/services/web/targets/127.0.0.1:{port}")
        version = removed.json()["resource_version"]
        assert admin_one.get("/v1/sync", params={"resource_version": version, "timeout_s": 20}).status_code == 200
        assert (await asyncio.to_thread(httpx.get, f"{one.proxy}/shared/x")).status_code == 503


def test_workers_exit_when_the_management_process_dies(tmp_path: Path) -> None:
    with gateway_process(tmp_path) as gw, gw.admin_client() as admin:
        pid = worker_pid(admin)
        gw.process.kill()
        gw.process.wait()

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            # A zombie (exited, not yet reaped by init) counts as gone.
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")

        wait_until(gone, 15, "worker exited after its management process was killed", 0.1)
