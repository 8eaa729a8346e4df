"""An in-process controller: the real app served by uvicorn on a loopback port, on a real SQLite file.

A real server rather than httpx's ASGI transport, which buffers whole responses and so cannot
carry a watch stream."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from rik.controller.app import ControllerSettings, create_app
from tests.support.postgres import create_database, postgres_server

ControllerFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One PostgreSQL server for the session; each test gets its own database in it."""
    with postgres_server() as address:
        yield address


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every controller test runs on SQLite and on PostgreSQL (the latter is an e2e test: it starts a server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    address: str = request.getfixturevalue("postgres")
    return create_database(address, f"rik_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def controller_factory(database_url: str) -> ControllerFactory:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = ControllerSettings(
            database_url=overrides.pop("database_url", database_url),
            **{"node_timeout": 60.0, "lease_ttl": 5.0, **overrides},
        )
        app = create_app(settings)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                client.app = app  # type: ignore[attr-defined]
                yield client
        finally:
            server.should_exit = True
            await task

    return start


@pytest.fixture
async def api(controller_factory: ControllerFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with controller_factory() as client:
        yield client


def manifest(name: str = "web", *, replicas: int = 1, memory: int = 64, cpu: int = 100, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rik/v1",
        "kind": spec.pop("kind", "Pod"),
        "metadata": {"name": name, "labels": spec.pop("labels", {})},
        "spec": {"image": "127.0.0.1:5000/web:1", "replicas": replicas, "resources": {"cpu": cpu, "memory": memory}}
        | spec,
    }


def node(name: str, *, cpu: int = 2000, memory: int = 2048, runtimes: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "address": "192.0.2.10",
        "riklet_url": "http://192.0.2.10:7701",
        "capacity": {"cpu": cpu, "memory": memory},
        "runtimes": ["container"] if runtimes is None else runtimes,
    }
