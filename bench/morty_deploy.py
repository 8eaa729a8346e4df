"""Morty's build times and its cold start from a snapshot, against RIK's own restore in the same run.

    uv run python -m bench.morty_deploy [--builds 3] [--runs 5]

Starts a registry, a RIK controller and riklet, and Morty APIs (with the builder and the RIK backend), then:

- **builds**: upload → build succeeded, for a hello-world (no dependency) and a function with one dependency
  (`six`), `--builds` times each (container isolation, so the deployment after each build stays short);
- **cold start**: one Python function deployed as a VM (booted once and snapshotted at deploy time), then
  `--runs` alternating pairs of
    * Morty: `POST /v1/functions/{name}/instances` (restores the snapshot; answers once ready) → first 200
      from the instance, and
    * raw RIK: the same workload scaled up by one through RIK's API, its watch followed to `Running` → first 200,
  each instance removed before the next. The ratio is Morty's overhead on top of RIK's restore.

The runtime base image and the guest kernel are built/provisioned once per machine and cached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from tests.support.registry import start_registry, stop_registry

from bench._harness import controller, free_port, report, wait_http
from morty.api.app import create_app
from morty.api.settings import Settings
from morty.builder.base import ensure_base_image
from morty.orchestrators.rik import RikOrchestrator
from rik.client import RikClient
from rik.model import EventType, Instance, Phase

BRIDGE = "rikmbench0"
SUBNET = "10.231.9.0/24"
GUEST_DIR = Path("/var/lib/rik/guest")
TOKEN = "bench-token-0123456789"
HELLO = "def handler(request):\n    return 'hello'\n"
WITH_SIX = "import six\n\n\ndef handler(request):\n    return {'six': six.__version__}\n"


def log(line: str) -> None:
    print(f"morty_deploy: {line}", file=sys.stderr, flush=True)


def archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buffer.getvalue()


async def until_version(api: httpx.AsyncClient, name: str, version: str, status: str, within: float = 900) -> float:
    """Bounded poll; the monotonic time the version reached `status` (fails on `failed`)."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        body = (await api.get(f"/v1/functions/{name}/versions/{version}")).json()
        if body["status"] == status or (status == "built" and body["status"] in ("deploying", "ready")):
            return time.perf_counter()
        if body["status"] == "failed":
            raise RuntimeError(f"{name} {version} failed: {body['status_message']}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{name} {version} not {status} within {within}s")


async def deploy(api: httpx.AsyncClient, name: str, files: dict[str, str], isolation: str) -> tuple[float, float]:
    """Create, upload; (seconds to built, seconds to ready) from the upload."""
    created = await api.post("/v1/functions", json={"name": name, "runtime": "python3.11", "isolation": isolation})
    created.raise_for_status()
    version = (await api.post(f"/v1/functions/{name}/versions", json={"version": "1.0.0"})).json()
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as plain:
        (await plain.put(version["upload"]["url"], content=archive(files))).raise_for_status()
    built = await until_version(api, name, "1.0.0", "built")
    ready = await until_version(api, name, "1.0.0", "ready")
    return built - started, ready - started


async def first_ok(http: httpx.AsyncClient, url: str, within: float = 60) -> float:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get(url)).status_code == 200:
                return time.perf_counter()
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{url} never answered 200")


async def morty_cold_start(api: httpx.AsyncClient, http: httpx.AsyncClient, name: str) -> tuple[float, float, str]:
    started = time.perf_counter()
    response = await api.post(f"/v1/functions/{name}/instances", json={})
    response.raise_for_status()
    ready = time.perf_counter()
    instance = response.json()
    served = await first_ok(http, instance["url"] + "/")
    await api.delete(f"/v1/functions/{name}/instances/{instance['id']}")
    return ready - started, served - started, instance["start_path"]


async def rik_cold_start(rik: RikClient, http: httpx.AsyncClient, key: str) -> tuple[float, float]:
    before = await rik.list_instances(workload=key)
    known = {i.id for i in before.items}
    started = time.perf_counter()
    workload = await rik.get_workload(key)
    await rik.scale_workload(key, workload.spec.replicas + 1)
    instance: Instance | None = None
    async for event in rik.watch(since=before.resource_version, resources="instances", workload=key):
        if event.type == EventType.DELETED:
            continue
        candidate = Instance.model_validate(event.object)
        if candidate.id not in known and candidate.phase == Phase.RUNNING:
            instance = candidate
            break
        if candidate.phase == Phase.FAILED:
            raise RuntimeError(f"instance failed: {candidate.reason}: {candidate.message}")
    assert instance is not None
    ready = time.perf_counter()
    binding = instance.ports[0]
    url = f"http://{instance.host_address}:{binding.host_port}/" if binding.host_port else None
    served = await first_ok(http, url or f"http://{instance.address}:{binding.port}/")
    await rik.delete_instance(instance.id, scale_down=True)
    return ready - started, served - started


async def measure(url: str, registry: str, workdir: Path, builds: int, runs: int) -> dict[str, Any]:
    base = await ensure_base_image("python3.11")
    port = free_port()
    settings = dataclasses.replace(
        Settings(),
        data_dir=workdir / "morty",
        database_url=f"sqlite:///{workdir / 'morty.db'}",
        public_url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        registry=registry,
        build_cache_dir=base.layout.parent.parent,
        scaling_tick=3600,
    )
    figures: dict[str, Any] = {}
    async with RikClient(url, timeout=60) as rik:
        app = create_app(settings, orchestrator=RikOrchestrator(rik))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        limits = httpx.Limits(max_keepalive_connections=0)
        try:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=300) as api,
                httpx.AsyncClient(timeout=1, limits=limits, trust_env=False) as http,
            ):
                hello, six = [], []
                for i in range(builds):
                    hello.append((await deploy(api, f"hello-{i}", {"main.py": HELLO}, "container"))[0])
                    files = {"main.py": WITH_SIX, "requirements.txt": "six==1.16.0\n"}
                    six.append((await deploy(api, f"six-{i}", files, "container"))[0])
                    log(f"build {i + 1}/{builds}: hello {hello[-1]:.1f} s, one dependency {six[-1]:.1f} s")
                figures["build_hello_s"] = statistics.median(hello)
                figures["build_one_dependency_s"] = statistics.median(six)

                _, vm_ready = await deploy(api, "coldvm", {"main.py": HELLO}, "vm")
                figures["vm_deploy_s"] = vm_ready
                log(f"VM version deployed (build, first boot, snapshot) in {vm_ready:.1f} s")
                [workload] = [w for w in (await rik.list_workloads()).items if w.kind == "VM"]
                key = workload.metadata.name
                morty_ready, morty_served, rik_ready, rik_served, paths = [], [], [], [], set()
                for run in range(runs):
                    order = ("morty", "rik") if run % 2 == 0 else ("rik", "morty")
                    for who in order:
                        if who == "morty":
                            ready, served, path = await morty_cold_start(api, http, "coldvm")
                            morty_ready.append(ready)
                            morty_served.append(served)
                            paths.add(path)
                        else:
                            ready, served = await rik_cold_start(rik, http, key)
                            rik_ready.append(ready)
                            rik_served.append(served)
                    pair = f"Morty {morty_served[-1] * 1000:.0f} ms, RIK {rik_served[-1] * 1000:.0f} ms"
                    log(f"run {run + 1}/{runs}: {pair}")
                figures.update(
                    morty_ready_ms=statistics.median(morty_ready) * 1000,
                    morty_served_ms=statistics.median(morty_served) * 1000,
                    rik_ready_ms=statistics.median(rik_ready) * 1000,
                    rik_served_ms=statistics.median(rik_served) * 1000,
                    start_paths=sorted(paths),
                )
                figures["ratio_served"] = figures["morty_served_ms"] / figures["rik_served_ms"]
                for name in ["coldvm", *(f"{p}-{i}" for i in range(builds) for p in ("hello", "six"))]:
                    await api.delete(f"/v1/functions/{name}")
        finally:
            server.should_exit = True
            await serving
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("morty_deploy: needs root (runc, QEMU, taps, network namespaces)")
    with tempfile.TemporaryDirectory(prefix="morty-bench-") as tmp:
        workdir = Path(tmp)
        registry = start_registry(workdir / "registry")
        riklet: subprocess.Popen[bytes] | None = None
        riklet_dir = workdir / "riklet"
        try:
            with controller(workdir) as url:
                port = free_port()
                riklet = subprocess.Popen(
                    [sys.executable, "-m", "rik.riklet", "--name", "mortybench", "--controller", url]
                    + ["--address", "127.0.0.1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(riklet_dir)]
                    + ["--bridge", BRIDGE, "--subnet", SUBNET, "--insecure-registry", registry.address]
                    + ["--guest-dir", str(GUEST_DIR), "--memory", "4096", "--cpu", "4000"]
                    + ["--log-level", os.environ.get("RIK_LOG_LEVEL", "WARNING")],
                    stdout=(workdir / "riklet.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
                wait_http(f"http://127.0.0.1:{port}/healthz", 120, riklet)
                figures = asyncio.run(measure(url, registry.address, workdir, args.builds, args.runs))
                riklet.terminate()
                riklet.wait(timeout=60)
        except BaseException:
            for name in ("riklet.log", "controller.log"):
                with contextlib.suppress(OSError):
                    sys.stderr.write(f"--- {name} (tail)\n" + (workdir / name).read_text()[-4000:])
            raise
        finally:
            if riklet is not None and riklet.poll() is None:
                riklet.kill()
                riklet.wait()
            if (riklet_dir / "subnet").is_file():
                subprocess.run(
                    [sys.executable, "-m", "rik.riklet", "--teardown", "--name", "mortybench"]
                    + ["--data-dir", str(riklet_dir), "--bridge", BRIDGE, "--address", "127.0.0.1"]
                    + ["--guest-dir", str(GUEST_DIR)],
                    check=False,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                )
            stop_registry(registry)
    report(
        "Morty: build times and cold start from a snapshot (medians)",
        [
            ("build, hello-world (upload → image pushed)", f"{figures['build_hello_s']:.1f} s"),
            ("build, one dependency (six)", f"{figures['build_one_dependency_s']:.1f} s"),
            ("VM deployment (build + first boot + snapshot)", f"{figures['vm_deploy_s']:.1f} s"),
            (
                "cold start through Morty (→ ready / → first 200)",
                f"{figures['morty_ready_ms']:.0f} / {figures['morty_served_ms']:.0f} ms  {figures['start_paths']}",
            ),
            (
                "raw RIK restore, same image (→ Running / → first 200)",
                f"{figures['rik_ready_ms']:.0f} / {figures['rik_served_ms']:.0f} ms",
            ),
            ("Morty / RIK (first 200)", f"{figures['ratio_served']:.2f}x"),
        ],  # fmt: skip
        figures,
    )


if __name__ == "__main__":
    main()
