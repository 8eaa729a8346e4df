"""Morty APIs on a real RIK: a controller and a riklet as processes (the RIK end-to-end harness), the
session's registry, the real builder, and Morty APIs served by uvicorn with the RIK backend."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from morty.api.app import create_app
from morty.api.settings import Settings
from morty.builder.base import BaseImage, ensure_base_image
from morty.orchestrators.rik import RikOrchestrator
from rik.client import RikClient
from tests.gateway.helpers import TOKEN as GATEWAY_TOKEN
from tests.gateway.helpers import GatewayProcess, gateway_process
from tests.rik.e2e._cluster import Cluster
from tests.rik.e2e.conftest import _bytecode_cache, cluster, e2e_image, image
from tests.support.registry import free_tcp_port
from tests.support.services import served

__all__ = ["_bytecode_cache", "cluster", "e2e_image", "image"]
TOKEN = "e2e-token-0123456789"
"""Morty's management token in every fixture here."""


@pytest.fixture(scope="session")
def base() -> BaseImage:
    return asyncio.run(ensure_base_image("python3.11"))


@dataclass
class Platform:
    api: httpx.AsyncClient
    rik: RikClient
    cluster: Cluster
    registry: str
    data_dir: Path
    app: Any

    async def wait_version(self, name: str, version: str, *, within: float = 600) -> dict[str, Any]:
        """Bounded poll until the version is `ready` or `failed` (a build and a first VM boot take a while)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        body: dict[str, Any] = {}
        while loop.time() < deadline:
            body = (await self.api.get(f"/v1/functions/{name}/versions/{version}")).json()
            if body.get("status") in ("ready", "failed"):
                return body
            await asyncio.sleep(0.25)
        raise AssertionError(f"{name} {version} not deployed within {within}s: {body}")


@pytest.fixture
async def platform(cluster: Cluster, registry: str, base: BaseImage, tmp_path: Path) -> AsyncIterator[Platform]:
    cluster.start_controller()
    cluster.start_riklet("n1", memory=3072)
    port = free_tcp_port()
    settings = dataclasses.replace(
        Settings(),
        data_dir=tmp_path / "morty",
        database_url=f"sqlite:///{tmp_path / 'morty.db'}",
        public_url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        registry=registry,
        build_cache_dir=base.layout.parent.parent,
        scaling_tick=0.25,
        provision_timeout=180,
    )
    async with RikClient(cluster.url) as rik:
        app = create_app(settings, orchestrator=RikOrchestrator(rik))
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with served(app, port) as url, httpx.AsyncClient(base_url=url, timeout=300, headers=auth) as api:
            yield Platform(api, rik, cluster, registry, settings.data_dir, app)


@dataclass
class Stack:
    api: httpx.AsyncClient
    gateway: GatewayProcess
    app: Any


@pytest.fixture
async def stack(cluster: Cluster, registry: str, base: BaseImage, tmp_path: Path) -> AsyncIterator[Stack]:
    cluster.start_controller()
    cluster.start_riklet("n1")
    port = free_tcp_port()
    sink = ["--sink", f"http://127.0.0.1:{port}/v1/gateway/records", "--sink-token", TOKEN]
    with gateway_process(tmp_path / "gateway", extra=sink) as gateway:
        settings = dataclasses.replace(
            Settings(),
            data_dir=tmp_path / "morty",
            database_url=f"sqlite:///{tmp_path / 'morty.db'}",
            public_url=f"http://127.0.0.1:{port}",
            token=TOKEN,
            registry=registry,
            build_cache_dir=base.layout.parent.parent,
            scaling_tick=0.25,
            gateway_url=gateway.admin,
            gateway_token=GATEWAY_TOKEN,
        )
        async with RikClient(cluster.url) as rik:
            app = create_app(settings, orchestrator=RikOrchestrator(rik))
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with served(app, port) as url, httpx.AsyncClient(base_url=url, timeout=300, headers=auth) as api:
                yield Stack(api, gateway, app)
