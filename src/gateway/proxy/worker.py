"""A data-plane worker process: one event loop (uvloop), one listening socket shared with the other
workers through SO_REUSEPORT, configuration followed from the management process.

    python -m gateway.proxy.worker --listen 0.0.0.0:8080 --admin-url http://127.0.0.1:8081 --worker-id 0
    (token in GATEWAY_TOKEN)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import socket
from collections.abc import Coroutine
from contextlib import suppress
from time import perf_counter
from typing import Any

import uvloop

from gateway.proxy.clock import CLOCK
from gateway.proxy.config import Config, Pool, Route, Target
from gateway.proxy.control import ControlClient
from gateway.proxy.health import HealthChecker
from gateway.proxy.protocol import ClientConnection, Exchange
from gateway.proxy.records import RecordShipper
from gateway.proxy.stats import Stats
from servicekit import logs

log = logging.getLogger("gateway.worker")
SWEEP_S = 0.1
PARENT_CHECK_S = 1.0


class RequestIds:
    """Unique request ids without a uuid per request: a random per-worker prefix and a counter."""

    __slots__ = ("_count", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(6).encode()
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return b"%s-%x" % (self._prefix, self._count)


class Worker:
    def __init__(
        self,
        *,
        workers: int,
        control: ControlClient | None,
        sinks: list[str] | None = None,
        sink_token: str | None = None,
    ) -> None:
        self.config = Config(workers, self._target_added)
        self.connections: set[ClientConnection] = set()
        self.ids = RequestIds()
        self.stats = Stats()
        self.shipper = RecordShipper(sinks or [], sink_token, self.stats)
        self.control = control
        self.holding: set[Route] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.health = HealthChecker(self.config, self.spawn)
        # Set when the last connection closes during a graceful shutdown.
        self.all_closed: asyncio.Event | None = None

    # Services for exchanges

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def observe(self, ex: Exchange) -> None:
        finished = perf_counter()
        route = ex.route
        self.stats.observe(route.name if route is not None else "", ex.status, finished - ex.started)
        if route is not None and self.shipper.enabled:
            target = ex.tried[-1] if ex.tried else None
            # A request held and then refused (503) was never released: it waited until it finished.
            provision = ((ex.released_at or finished) - ex.held_at) if ex.held_at else 0.0
            sent = ex.sent_at or finished
            query = ex.url.find(b"?")
            self.shipper.add(
                {
                    "id": ex.request_id.decode("latin-1"),
                    "route": route.name,
                    "route_labels": route.labels,
                    "service": route.service,
                    "target": target.address if target is not None else None,
                    "target_labels": target.labels if target is not None else {},
                    "method": ex.method.decode("latin-1"),
                    "path": (ex.url if query < 0 else ex.url[:query]).decode("latin-1"),
                    "status": ex.status,
                    "bytes_in": ex.body_in,
                    "bytes_out": ex.bytes_out,
                    "started_at": ex.started,
                    "finished_at": finished,
                    "queue_ms": round(max(0.0, sent - ex.started - provision) * 1000, 3),
                    "provision_ms": round(provision * 1000, 3),
                    "upstream_ms": round((finished - ex.sent_at) * 1000, 3) if ex.sent_at else 0.0,
                    "start": ex.start_path or "warm",
                }
            )

    def held(self, route: Route) -> None:
        """A request is waiting for a target of `route`: ask for provisioning once per route."""
        self.holding.add(route)
        if not route.provisioning and self.control is not None and route.provisioner is not None:
            route.provisioning = True
            self.spawn(self._provision(route, route.provisioner.timeout_s))

    async def _provision(self, route: Route, timeout_s: float) -> None:
        assert self.control is not None
        ok, message = await self.control.provision(route.name, timeout_s)
        route.provisioning = False
        if not ok:
            log.warning("provisioning failed", extra={"route": route.name, "error": message})
            while route.held:
                route.held.popleft().reject_held(503, f"provisioning failed: {message}")
            self.holding.discard(route)

    def _target_added(self, pool: Pool, target: Target) -> None:
        for route in list(self.holding):
            if route.service != pool.name or not route.held:
                continue
            self.stats.cold_start(route.name)
            target.fresh_start = target.labels.get("start_path", "cold")
            waiting = list(route.held)
            route.held.clear()
            self.holding.discard(route)
            for exchange in waiting:
                exchange.release()

    # Timers

    async def sweep(self) -> None:
        """One timer for every timeout of every connection (rather than a timer per request)."""
        while True:
            await asyncio.sleep(SWEEP_S)
            now = CLOCK.tick()
            for connection in list(self.connections):
                connection.sweep(now)
            for route in list(self.holding):
                while route.held and route.held[0].hold_deadline <= now:
                    assert route.provisioner is not None
                    route.held.popleft().reject_held(
                        503, f"no upstream became ready within {route.provisioner.timeout_s:g}s"
                    )
                if not route.held:
                    self.holding.discard(route)

    def report(self) -> dict[str, Any]:
        routes = {name: route.in_flight for name, route in self.config.routes.items()}
        targets = {target.key: target.in_flight for pool in self.config.pools.values() for target in pool.members}
        return {
            "resource_version": self.config.resource_version,
            "in_flight": {"routes": routes, "targets": targets},
            "held": {route.name: len(route.held) for route in self.holding},
            "unhealthy": [
                target.key
                for pool in self.config.pools.values()
                for target in pool.members
                if not target.usable(CLOCK.now)
            ],
            "stats": self.stats.snapshot(),
        }

    # Lifecycle

    async def serve(self, host: str, port: int, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        assert self.control is not None
        self.spawn(self._watch_parent(os.getppid(), stopping))
        self.spawn(self.control.follow(self.config))
        synced = loop.create_task(self.control.synced.wait())
        stopped = loop.create_task(stopping.wait())
        await asyncio.wait((synced, stopped), return_when=asyncio.FIRST_COMPLETED)
        synced.cancel()
        if stopping.is_set():
            stopped.cancel()
            await self.control.close()
            return
        stopped.cancel()
        server = await self.listen(host, port)
        self.spawn(self.control.report(self.report))
        log.info("worker serving", extra={"listen": f"{host}:{port}", "pid": os.getpid()})
        await stopping.wait()
        await self.drain(server, grace_s)

    async def _watch_parent(self, parent: int, stopping: asyncio.Event) -> None:
        """A worker whose management process died (even by SIGKILL) drains and exits rather than
        serving a configuration nobody can change any more."""
        while True:
            await asyncio.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                log.warning("management process gone; stopping", extra={"parent": parent})
                stopping.set()
                return

    async def listen(self, host: str, port: int) -> asyncio.Server:
        """Accept connections on the shared port and start the worker's timers (usable without a control
        client: tests drive `config` directly)."""
        CLOCK.tick()  # the coarse clock must be fresh before the first request reads it
        sock = listening_socket(host, port)
        server = await asyncio.get_running_loop().create_server(lambda: ClientConnection(self), sock=sock, backlog=4096)
        self.spawn(self.sweep())
        self.spawn(self.health.run())
        if self.shipper.enabled:
            self.spawn(self.shipper.run())
        return server

    async def drain(self, server: asyncio.Server, grace_s: float) -> None:
        """Graceful shutdown: stop accepting, close idle connections, let in-flight requests finish."""
        server.close()
        for connection in list(self.connections):
            connection.shutting_down = True
            if connection.ex is None and not connection.reading_head:
                connection.transport.close()
        if self.connections:
            self.all_closed = asyncio.Event()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), grace_s)
        for connection in list(self.connections):
            connection.transport.abort()
        if self.shipper.enabled:
            await self.shipper.flush()
        if self.control is not None:
            await self.control.close()
        for task in list(self.tasks):
            task.cancel()
        log.info("worker stopped", extra={"pid": os.getpid()})


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Every worker binds the same port; the kernel spreads new connections over them.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gateway-worker")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--worker-id", default="0")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sink", action="append", default=[])
    parser.add_argument("--shutdown-grace", type=float, default=30.0)
    args = parser.parse_args(argv)
    logs.configure("gateway-worker", os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"))
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = os.environ["GATEWAY_TOKEN"]
    host, _, port = args.listen.rpartition(":")

    async def run() -> None:
        control = ControlClient(args.admin_url, token, args.worker_id)
        worker = Worker(
            workers=args.workers, control=control, sinks=args.sink, sink_token=os.environ.get("GATEWAY_SINK_TOKEN")
        )
        await worker.serve(host.strip("[]"), int(port), args.shutdown_grace)

    uvloop.run(run())


if __name__ == "__main__":
    main()
