"""`gateway`: the management process. It migrates the database, serves the management API, and runs N
data-plane worker processes that share the proxy port through SO_REUSEPORT and follow the management
API's change stream, so every worker applies every change, in order.

Every flag has an environment variable (flags win):

    --listen HOST:PORT        GATEWAY_LISTEN         proxy address (default 0.0.0.0:8080)
    --admin-listen HOST:PORT  GATEWAY_ADMIN_LISTEN   management API (default 127.0.0.1:8081)
    --workers N               GATEWAY_WORKERS        data-plane processes (default 1)
    --database URL            GATEWAY_DATABASE       sqlite:///path or postgresql://... (default sqlite:///gateway.db)
    --token TOKEN             GATEWAY_TOKEN          bearer token of the management API (required)
    --sink URL (repeatable)   GATEWAY_SINKS          record sinks, comma-separated in the variable
    --sink-token TOKEN        GATEWAY_SINK_TOKEN     bearer token sent to the sinks
    --shutdown-grace SECONDS  GATEWAY_SHUTDOWN_GRACE time in-flight requests get at shutdown (default 30)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
import uvloop

from gateway.admin.app import create_app
from gateway.admin.workers import WorkerRegistry
from gateway.store.database import GatewayDatabase
from servicekit import logs

log = logging.getLogger("gateway")
RESTART_BACKOFF_S = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="gateway", description="API gateway: HTTP reverse proxy workers and their management API"
    )
    add = parser.add_argument
    add("--listen", default=env("GATEWAY_LISTEN", "0.0.0.0:8080"), help="proxy address (GATEWAY_LISTEN)")
    add("--admin-listen", default=env("GATEWAY_ADMIN_LISTEN", "127.0.0.1:8081"), help="management API address")
    add("--workers", type=int, default=int(env("GATEWAY_WORKERS", "1")), help="proxy processes (GATEWAY_WORKERS)")
    add("--database", default=env("GATEWAY_DATABASE", "sqlite:///gateway.db"), help="sqlite:/// or postgresql:// URL")
    add("--token", default=env("GATEWAY_TOKEN"), help="management API bearer token (GATEWAY_TOKEN)")
    sinks = [s for s in env("GATEWAY_SINKS", "").split(",") if s]
    add("--sink", action="append", default=None, help="record sink URL, repeatable (GATEWAY_SINKS, comma-separated)")
    add("--sink-token", default=env("GATEWAY_SINK_TOKEN"), help="bearer token sent to the sinks")
    add("--shutdown-grace", type=float, default=float(env("GATEWAY_SHUTDOWN_GRACE", "30")), help="seconds")
    add("--log-level", default=env("GATEWAY_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a management token is required (--token or GATEWAY_TOKEN)")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    args.sink = args.sink if args.sink is not None else sinks
    return args


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Supervisor:
    """Runs the worker processes and restarts one that dies unexpectedly."""

    def __init__(self, args: argparse.Namespace, admin_url: str) -> None:
        self.args = args
        self.admin_url = admin_url
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, index: int) -> None:
        argv = [sys.executable, "-m", "gateway.proxy.worker", "--listen", self.args.listen]
        argv += ["--admin-url", self.admin_url, "--worker-id", str(index), "--workers", str(self.args.workers)]
        argv += ["--shutdown-grace", str(self.args.shutdown_grace)]
        for sink in self.args.sink:
            argv += ["--sink", sink]
        env = {**os.environ, "GATEWAY_TOKEN": self.args.token, "GATEWAY_LOG_LEVEL": self.args.log_level}
        if self.args.sink_token:
            env["GATEWAY_SINK_TOKEN"] = self.args.sink_token
        self.processes[index] = subprocess.Popen(argv, env=env)
        log.info("worker started", extra={"worker": index, "pid": self.processes[index].pid})

    async def watch(self) -> None:
        while not self.stopping:
            await asyncio.sleep(0.5)
            for index, process in list(self.processes.items()):
                if process.poll() is not None and not self.stopping:
                    log.error("worker died; restarting", extra={"worker": index, "code": process.returncode})
                    await asyncio.sleep(RESTART_BACKOFF_S)
                    self.start(index)

    async def stop(self) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.shutdown_grace + 5
        for process in self.processes.values():
            try:
                await asyncio.to_thread(process.wait, max(0.1, deadline - loop.time()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _AdminServer(uvicorn.Server):
    """uvicorn without its own signal handling: the management process drains workers first."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(args: argparse.Namespace) -> None:
    host, port = split_address(args.listen)
    # Fail early, in the management process, when the proxy port is taken by something else.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host, port))
    admin_host, admin_port = split_address(args.admin_listen)
    db = GatewayDatabase(args.database)
    await db.migrate()
    registry = WorkerRegistry(expected=args.workers)
    app = create_app(db, args.token, workers=registry, migrate=False)
    server = _AdminServer(
        uvicorn.Config(app, host=admin_host, port=admin_port, log_config=None, access_log=False, lifespan="on")
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    serving = loop.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            return
        await asyncio.sleep(0.01)
    connect_host = "127.0.0.1" if admin_host in ("0.0.0.0", "") else ("::1" if admin_host == "::" else admin_host)
    connect_host = f"[{connect_host}]" if ":" in connect_host else connect_host
    supervisor = Supervisor(args, f"http://{connect_host}:{admin_port}")
    for index in range(args.workers):
        supervisor.start(index)
    watching = loop.create_task(supervisor.watch())
    log.info("gateway running", extra={"listen": args.listen, "admin": args.admin_listen, "workers": args.workers})
    await stop.wait()
    log.info("gateway stopping: draining workers")
    await supervisor.stop()
    watching.cancel()
    server.should_exit = True
    await serving
    await db.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs.configure("gateway", args.log_level)
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
