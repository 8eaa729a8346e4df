"""Through Morty APIs with a registry configured: an upload is built for real, its log in the build record, and
a secret's value never appears in that log."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from morty.api.app import create_app
from morty.api.settings import Settings
from morty.builder.base import BaseImage, ensure_base_image
from tests.morty.builder.test_builder import HANDLER, code_zip
from tests.support.registry import free_tcp_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
TOKEN = "test-token-0123456789"
SECRET = "s3cr3t-value-in-requirements"


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return asyncio.run(ensure_base_image("python3.11"))


async def _wait_build(api: httpx.AsyncClient, name: str, build_id: str) -> dict[str, Any]:
    for _ in range(1200):
        build: dict[str, Any] = (await api.get(f"/v1/functions/{name}/builds/{build_id}")).json()
        if build["status"] in ("succeeded", "failed"):
            return build
        await asyncio.sleep(0.2)
    raise AssertionError(f"build {build_id} never finished")


async def test_upload_is_built(base: BaseImage, registry: str, tmp_path: Path) -> None:
    port = free_tcp_port()
    settings = dataclasses.replace(
        Settings(),
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'morty.db'}",
        public_url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        registry=registry,
        build_cache_dir=base.layout.parent.parent,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as api:
            created = await api.post("/v1/functions", json={"name": "hello", "runtime": "python3.11"})
            assert created.status_code == 201, created.text
            put = await api.put("/v1/functions/hello/secrets/TOKEN", json={"value": SECRET})
            assert put.status_code in (200, 201), put.text

            results = {}
            for version, requirements in (("1.0.0", "six\n"), ("1.1.0", f"six\n{SECRET}-no-such-package\n")):
                version_doc = (await api.post("/v1/functions/hello/versions", json={"version": version})).json()
                archive = code_zip({"main.py": HANDLER, "requirements.txt": requirements})
                async with httpx.AsyncClient(timeout=30) as plain:
                    uploaded = await plain.put(version_doc["upload"]["url"], content=archive)
                assert uploaded.status_code == 200, uploaded.text
                results[version] = await _wait_build(api, "hello", uploaded.json()["build"]["id"])

            good, bad = results["1.0.0"], results["1.1.0"]
            assert good["status"] == "succeeded", good["log"]
            assert good["image"] == f"{registry}/morty/fn-hello:1.0.0"
            assert good["digest"].startswith("sha256:")
            assert "Successfully installed six" in good["log"]
            assert bad["status"] == "failed"
            assert "No matching distribution found" in bad["log"]
            assert SECRET not in bad["log"] and SECRET not in bad["message"]
            for tag in (base.hash, "latest"):
                inspect = await asyncio.create_subprocess_exec(
                    "skopeo", "inspect", "--raw", "--tls-verify=false",
                    f"docker://{registry}/morty/runtime-python3.11:{tag}", stdout=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                assert await inspect.wait() == 0, f"base image :{tag} not in the registry"
            first = (await api.get("/v1/functions/hello/versions/1.0.0")).json()
            assert first["status"] == "ready" and first["digest"] == good["digest"]
    finally:
        server.should_exit = True
        await task
