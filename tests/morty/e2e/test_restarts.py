"""`kill -9` of the `morty-api` process mid-build and mid-provisioning, on a real RIK: after a restart no
acknowledged function or version is lost, the interrupted build runs again to success (never stuck
`running`), and the instance RIK started for a provisioning nobody recorded is adopted, then stopped when
idle, so nothing runs that Morty does not know about."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from morty.builder.base import BaseImage
from rik.client import RikClient
from rik.model import DesiredState
from tests.rik.e2e._cluster import Cluster, Proc, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
TOKEN = "restart-token-0123456789"
HANDLER = "def handler(request):\n    return {'ok': True}\n"


class MortyProcess:
    def __init__(self, root: Path, registry: str, rik_url: str, base: BaseImage) -> None:
        self.data_dir = root / "morty"
        self.data_dir.mkdir(parents=True)
        (self.data_dir / "token").write_text(TOKEN)
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Proc("morty-api", root / "morty-api.log")
        self.argv = [
            sys.executable, "-m", "morty.api", "--listen", f"127.0.0.1:{self.port}",
            "--data-dir", str(self.data_dir), "--database", f"sqlite:///{root / 'morty.db'}",
            "--registry", registry, "--rik-url", rik_url,
        ]  # fmt: skip

    def start(self) -> None:
        self.proc.start(self.argv)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.alive(), self.proc.tail()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"morty-api did not start:\n{self.proc.tail()}")


@pytest.fixture
async def morty(
    cluster: Cluster, registry: str, base: BaseImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MortyProcess]:
    monkeypatch.setenv("MORTY_BUILD_CACHE", str(base.layout.parent.parent))
    monkeypatch.setenv("MORTY_SCALING_TICK", "0.25")
    cluster.start_controller()
    cluster.start_riklet("n1")
    process = MortyProcess(tmp_path, registry, cluster.url, base)
    process.start()
    try:
        yield process
    finally:
        process.proc.stop()
        assert "Traceback" not in process.proc.log_path.read_text(), process.proc.tail(80)


async def _until(check: Any, what: str, within: float = 300) -> Any:
    """Bounded poll of an async `check` until it returns something truthy."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within}s: {what}")


async def test_kill_9_mid_build_and_mid_provisioning_loses_and_leaks_nothing(
    morty: MortyProcess, cluster: Cluster, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=morty.url, headers=auth, timeout=60) as api, RikClient(cluster.url) as rik:
        created = await api.post(
            "/v1/functions",
            json={"name": "sturdy", "runtime": "python3.11", "isolation": "container", "idle_timeout_seconds": 2},
        )
        assert created.status_code == 201, created.text
        version = (await api.post("/v1/functions/sturdy/versions", json={"version": "1.0.0"})).json()
        archive = tmp_path / "code.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("main.py", HANDLER)
            zf.writestr("requirements.txt", "six==1.16.0\n")
        async with httpx.AsyncClient(timeout=60) as plain:
            uploaded = await plain.put(version["upload"]["url"], content=archive.read_bytes())
        assert uploaded.status_code == 200, uploaded.text
        build_id = uploaded.json()["build"]["id"]

        async def build_status() -> str:
            return str((await api.get(f"/v1/functions/sturdy/builds/{build_id}")).json()["status"])

        await _until(lambda: _equals(build_status, "running"), "the build runs")
        morty.proc.kill(signal.SIGKILL)
        morty.start()

        async def finished() -> bool:
            return await build_status() in ("succeeded", "failed")

        await _until(finished, "the interrupted build finishes")
        build = (await api.get(f"/v1/functions/sturdy/builds/{build_id}")).json()
        assert build["status"] == "succeeded", build["log"]
        assert "interrupted by a restart" in build["log"]

        async def deployed() -> bool:
            status = (await api.get("/v1/functions/sturdy/versions/1.0.0")).json()["status"]
            assert status != "failed"
            return bool(status == "ready")

        await _until(deployed, "the version is deployed")
        [workload] = (await rik.list_workloads()).items

        # Kill Morty while RIK starts the instance it asked for: nobody recorded it.
        asking = asyncio.create_task(api.post("/v1/functions/sturdy/instances", json={}))

        async def started_in_rik() -> bool:
            items = (await rik.list_instances(workload=workload.metadata.name)).items
            return any(i.desired_state == DesiredState.RUNNING for i in items)

        await _until(started_in_rik, "RIK starts the instance")
        morty.proc.kill(signal.SIGKILL)
        with pytest.raises(httpx.TransportError):
            await asking
        morty.start()

        async def adopted() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = (await api.get("/v1/functions/sturdy/instances")).json()["items"]
            return [i for i in items if i["start_path"] == "adopted"]

        await _until(adopted, "the unrecorded instance is adopted", within=60)

        async def nothing_runs() -> bool:
            items = (await rik.list_instances(workload=workload.metadata.name)).items
            recorded = (await api.get("/v1/functions/sturdy/instances")).json()["items"]
            return not recorded and all(i.desired_state == DesiredState.DELETED for i in items)

        await _until(nothing_runs, "the adopted instance stops once idle", within=60)
        assert (await rik.get_workload(workload.metadata.name)).spec.replicas == 0
        assert (await api.get("/v1/functions/sturdy")).status_code == 200


async def _equals(get: Any, wanted: str) -> bool:
    return bool(await get() == wanted)
