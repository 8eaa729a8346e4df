"""An in-process controller: the real app served by uvicorn on a loopback port, on a real SQLite file.

A real server rather than httpx's ASGI transport, which buffers whole responses and so cannot
carry a watch stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

from rik.controller.app import ControllerSettings, create_app
from tests.support.registry import free_tcp_port
from tests.support.services import served

ControllerFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def controller_factory(database_url: str) -> ControllerFactory:
    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings = ControllerSettings(
            database_url=overrides.pop("database_url", database_url),
            **{"node_timeout": 60.0, "lease_ttl": 5.0, **overrides},
        )
        app = create_app(settings)
        async with served(app, free_tcp_port()) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client

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
