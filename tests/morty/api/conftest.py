"""In-process Morty APIs: the real app served by uvicorn on a loopback port, on SQLite and (e2e)
PostgreSQL, with a real data directory. Uploads go over real HTTP to the signed URLs it returns."""

from __future__ import annotations

import dataclasses
import io
import logging
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from morty.api.app import create_app
from morty.api.settings import Settings
from morty.orchestrators.base import Orchestrator
from tests.support.registry import free_tcp_port
from tests.support.services import served

TOKEN = "test-token-0123456789"
MortyFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture(autouse=True)
def _log_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """Run Morty's log calls for real: a bad `extra=` only fails once INFO is enabled."""
    caplog.set_level(logging.INFO, logger="morty")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def morty_factory(database_url: str, data_dir: Path) -> MortyFactory:
    @asynccontextmanager
    async def start(orchestrator: Orchestrator | None = None, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
        port = free_tcp_port()
        settings = dataclasses.replace(
            Settings(),
            data_dir=data_dir,
            database_url=database_url,
            public_url=f"http://127.0.0.1:{port}",
            token=TOKEN,
            **overrides,
        )
        app = create_app(settings, orchestrator=orchestrator)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with served(app, port) as url, httpx.AsyncClient(base_url=url, timeout=10, headers=auth) as client:
            client.app = app  # type: ignore[attr-defined]
            yield client

    return start


@pytest.fixture
async def api(morty_factory: MortyFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with morty_factory() as client:
        yield client


def zip_bytes(files: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in (files or {"handler.py": "def handler(request):\n    return 'hello'\n"}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def create_function(api: httpx.AsyncClient, name: str = "hello", **config: Any) -> dict[str, Any]:
    response = await api.post("/v1/functions", json={"name": name, "runtime": "python3.11", **config})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def create_version(api: httpx.AsyncClient, name: str, version: str) -> dict[str, Any]:
    response = await api.post(f"/v1/functions/{name}/versions", json={"version": version})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def upload(url: str, content: bytes) -> httpx.Response:
    """PUT to a pre-signed URL as a client would: no bearer token."""
    async with httpx.AsyncClient(timeout=10) as plain:
        return await plain.put(url, content=content, headers={"Content-Type": "application/octet-stream"})


async def deploy(api: httpx.AsyncClient, name: str, version: str) -> dict[str, Any]:
    """Create and upload a version; returns the upload result (version uploaded, build queued)."""
    created = await create_version(api, name, version)
    response = await upload(created["upload"]["url"], zip_bytes())
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def finish_build(api: httpx.AsyncClient, build_id: str, *, succeeded: bool = True) -> None:
    """Play the builder's part through the store functions it calls, and hand a success to the deployer
    (when an orchestrator is attached) as the builder does."""
    from morty.api import store
    from morty.api.tables import BuildRow

    morty = api.app.state.morty  # type: ignore[attr-defined]
    db = morty.db
    async with db.transaction() as session:
        await store.start_build(session, build_id)
    async with db.transaction() as session:
        await store.append_build_log(session, build_id, "installing dependencies\n")
    async with db.transaction() as session:
        await store.finish_build(
            session,
            build_id,
            succeeded=succeeded,
            message="built" if succeeded else "pip install failed: no such package",
            image="127.0.0.1:5000/fn/hello@sha256:" + "a" * 64 if succeeded else None,
            digest="sha256:" + "a" * 64 if succeeded else None,
            deploy=morty.deployer is not None,
        )
    if succeeded and morty.deployer is not None:
        async with db.read() as session:
            build = await session.get(BuildRow, build_id)
        await morty.deployer.enqueue(build.version_id)
        await morty.deployer.wait(build.version_id)


async def ready_version(api: httpx.AsyncClient, name: str, version: str, *, succeeded: bool = True) -> None:
    uploaded = await deploy(api, name, version)
    await finish_build(api, uploaded["build"]["id"], succeeded=succeeded)
