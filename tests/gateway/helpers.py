"""Helpers for gateway tests: raw HTTP over sockets, an in-process data plane, a gateway process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.proxy.worker import Worker
from tests.gateway.upstream import make_app
from tests.support.registry import free_tcp_port
from tests.support.services import served

TOKEN = "test-token-0123456789"


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the gateway closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length or chunked body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await asyncio.wait_for(reader.readline(), timeout)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            if size == 0:
                break
            body += chunk[:-2]
    return status, headers, body


def event(kind: str, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "put" if spec is not None else "delete",
        "kind": kind,
        "name": name,
        "spec": spec,
        "resource_version": 1,
    }


@dataclass
class Plane:
    """A data-plane worker in the test's event loop, with upstreams served by uvicorn in the same loop."""

    worker: Worker
    port: int
    upstreams: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        self.worker.config.apply(event(kind, name, spec))

    def delete(self, kind: str, name: str) -> None:
        self.worker.config.apply(event(kind, name))

    def route(self, name: str, **spec: Any) -> None:
        self.put("route", name, {"service": "svc", **spec})


@asynccontextmanager
async def data_plane(upstream_names: tuple[str, ...] = ("a",), **worker_options: Any) -> AsyncIterator[Plane]:
    worker = Worker(workers=1, control=None, **worker_options)
    port = free_tcp_port()
    server = await worker.listen("127.0.0.1", port)
    plane = Plane(worker, port)
    plane.put("service", "svc", {"retries": 2})
    async with _upstreams(plane, list(upstream_names)):
        plane.route("default", path_prefix="/")
        try:
            yield plane
        finally:
            server.close()
            for connection in list(worker.connections):
                connection.transport.abort()
            for task in list(worker.tasks):
                task.cancel()
            await asyncio.gather(*worker.tasks, return_exceptions=True)


@asynccontextmanager
async def _upstreams(plane: Plane, names: list[str]) -> AsyncIterator[None]:
    if not names:
        yield
        return
    name = names[0]
    port = free_tcp_port()
    async with served(make_app(name), port):
        plane.upstreams[name] = port
        plane.put("target", f"svc/127.0.0.1:{port}", {"address": f"127.0.0.1:{port}"})
        async with _upstreams(plane, names[1:]):
            yield


# Processes


def wait_until(condition: Any, timeout: float, message: str, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {message}")
        time.sleep(interval)


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    proxy: str
    admin: str
    log: Path

    def admin_client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.admin, headers=headers, timeout=30)

    def sync(self, client: httpx.Client) -> None:
        response = client.get("/v1/sync", params={"timeout_s": 20})
        assert response.status_code == 200, response.text


@contextmanager
def gateway_process(
    workdir: Path, *, database: str | None = None, workers: int = 1, extra: list[str] | None = None
) -> Iterator[GatewayProcess]:
    proxy_port, admin_port = free_tcp_port(), free_tcp_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"gateway-{proxy_port}.log"
    argv = [sys.executable, "-m", "gateway", "--listen", f"127.0.0.1:{proxy_port}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin_port}", "--workers", str(workers), "--shutdown-grace", "10"]
    argv += ["--database", database or f"sqlite:///{workdir / 'gateway.db'}", *(extra or [])]
    env = {**os.environ, "GATEWAY_TOKEN": TOKEN, "GATEWAY_LOG_LEVEL": "WARNING"}
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
    running = GatewayProcess(process, f"http://127.0.0.1:{proxy_port}", f"http://127.0.0.1:{admin_port}", log)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"gateway exited: {log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{running.admin}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 60, "gateway ready", interval=0.05)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextmanager
def upstream_process(name: str, port: int | None = None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = port or free_tcp_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway.upstream", "--port", str(port), "--name", name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"upstream {name} exited")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 30, f"upstream {name} up", interval=0.05)
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
