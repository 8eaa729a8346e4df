"""Density: how many instances of the Python HTTP server image fit on a node, by memory and by CPU.

A real controller and riklet run N containers and N VMs of the image bench/vm_start.py uses (a Debian
python3 `ThreadingHTTPServer`). The VMs are clones restored from one snapshot of a booted VM, as Morty
runs functions; one booted VM is measured as well. Every instance must answer 200 before anything is
measured. Then, per instance, after a short settle:

- memory: PSS (proportional set size, so pages shared between clones or with the host count once) of
  its processes: the container's cgroup, or the VM's qemu process;
- idle CPU: utime + stime of the same processes over `--window` seconds, as a fraction of one core.

Instances per node by memory = the riklet's offered memory (total minus 512 MiB) / median PSS; by CPU =
the node's cores / median idle CPU per instance (how many idle instances the CPU could carry); the
scheduler's own limit (offered capacity / the workload's requests: 100 millicores, 64 or 128 MiB) is
shown next to them.

    uv run python -m bench.density [--instances 8] [--vms 3] [--window 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from tests.support.registry import start_registry, stop_registry

from bench._harness import controller, cpu_seconds, report, riklet
from bench._python_image import PORT, python_http_image
from bench.vm_start import GUEST_DIR, MEMORY_MIB, SNAPSHOT, Rik, first_ok, push_oci
from rik.client import RikClient
from rik.drivers.container._cgroups import cgroup_dirs
from rik.riklet.records import RecordStore

BRIDGE = "rikdensbench0"
SUBNET = "10.231.11.0/24"
CONTAINER_MEMORY_MIB = 64
CPU_REQUEST = 100
RESERVED_MIB = 512  # what the riklet keeps for the host by default


def pss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    kib += int(line.split()[1])
    return kib / 1024


def instance_pids(data_dir: Path, instance_id: str) -> list[int]:
    """The container's processes (its cgroup), or the VM's qemu process."""
    state = RecordStore(data_dir / "instances").load_all()[instance_id].state
    if "cgroups_path" in state:
        for directory in cgroup_dirs(state["cgroups_path"]):
            procs = directory / "cgroup.procs"
            if procs.is_file() and (pids := [int(line) for line in procs.read_text().split()]):
                return pids
        raise RuntimeError(f"no process in the cgroup of {instance_id}")
    return [int(state["pid"])]


def sample(data_dir: Path, ids: list[str], window: float) -> tuple[list[float], list[float]]:
    """(PSS MiB, idle CPU fraction of a core) per instance."""
    pids = {i: instance_pids(data_dir, i) for i in ids}
    before = {i: cpu_seconds(p) for i, p in pids.items()}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    cpu = [(cpu_seconds(p) - before[i]) / elapsed for i, p in pids.items()]
    return [pss_mib(p) for p in pids.values()], cpu


def pod(image: str, name: str, replicas: int) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "image": image,
            "replicas": replicas,
            "ports": [{"port": PORT}],
            "resources": {"cpu": CPU_REQUEST, "memory": CONTAINER_MEMORY_MIB},
        },
    }


async def serving(rik: Rik, name: str) -> list[str]:
    """Every instance of `name` answers 200 (asserted); their ids."""
    instances = (await rik.client.list_instances(workload=name)).items
    assert rik.http is not None
    deadline = time.perf_counter() + 60
    await asyncio.gather(*(first_ok(rik.http, f"http://{i.address}:{PORT}/", deadline) for i in instances))
    return [i.id for i in instances]


async def measure_serving(
    rik: Rik, name: str, kind: str, started: float, window: float, figures: dict[str, Any], log: Any
) -> None:
    """Every instance of `name` serves (asserted); then its memory and idle CPU, into `figures`."""
    ids = await serving(rik, name)
    figures[f"{kind}s_started"] = len(ids)
    figures[f"{kind}s_all_serving_s"] = time.perf_counter() - started
    log(f"{len(ids)} {kind}s serving in {figures[f'{kind}s_all_serving_s']:.1f} s")
    await asyncio.sleep(1)
    figures[f"{kind}_pss_mib"], figures[f"{kind}_idle_cpu"] = sample(rik.data_dir, ids, window)


async def measure(rik: Rik, containers: int, vms: int, window: float, log: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    # Containers: one workload of N replicas, all serving.
    since = (await rik.client.list_instances()).resource_version
    started = time.perf_counter()
    await rik.client.create_workload(pod(rik.image, "dens-ctr", containers))
    running: set[str] = set()
    async for event in rik.client.watch(since=since, resources="instances", workload="dens-ctr"):
        if event.object["phase"] == "Failed":
            raise RuntimeError(f"container failed: {event.object['message']}")
        if event.object["phase"] == "Running":
            running.add(event.object["id"])
        if len(running) == containers:
            break
    await measure_serving(rik, "dens-ctr", "container", started, window, figures, log)
    await rik.delete("dens-ctr")

    # VMs: one booted (measured too), snapshotted; N clones restored from it, all serving.
    [(source, boot_s)] = await rik.start("dens-boot")
    log(f"VM booted in {boot_s:.1f} s")
    await rik.snapshot(source)
    started = time.perf_counter()
    await rik.start("dens-clones", vms, SNAPSHOT)
    await measure_serving(rik, "dens-clones", "vm", started, window, figures, log)
    [booted_pss], [booted_cpu] = sample(rik.data_dir, [source], window)
    figures["booted_vm_pss_mib"], figures["booted_vm_idle_cpu"] = booted_pss, booted_cpu
    await rik.delete("dens-clones")
    await rik.delete("dens-boot")
    await rik.delete_snapshot()
    return figures


def per_node(figures: dict[str, Any], node_mib: float, cores: int) -> dict[str, Any]:
    out: dict[str, Any] = {"node_memory_mib": node_mib, "node_cores": cores}
    for kind, request_mib in (("container", CONTAINER_MEMORY_MIB), ("vm", MEMORY_MIB)):
        pss = statistics.median(figures[f"{kind}_pss_mib"])
        cpu = statistics.median(figures[f"{kind}_idle_cpu"])
        out[f"{kind}_pss_median_mib"] = pss
        out[f"{kind}_idle_cpu_median"] = cpu
        out[f"{kind}s_per_node_by_memory"] = int(node_mib // pss)
        # An instance that used no measurable CPU in the window: one clock tick is the floor, so the
        # figure is a lower bound ("at least").
        floor = 1 / os.sysconf("SC_CLK_TCK") / figures["window_s"]
        out[f"{kind}s_per_node_by_cpu"] = int(cores / max(cpu, floor))
        out[f"{kind}s_per_node_by_cpu_at_least"] = cpu < floor
        out[f"{kind}s_per_node_scheduler"] = int(min(cores * 1000 // CPU_REQUEST, node_mib // request_mib))
    return out


def _cpu(figures: dict[str, Any], kind: str) -> str:
    at_least = "at least " if figures[f"{kind}s_per_node_by_cpu_at_least"] else ""
    return f"{at_least}{figures[f'{kind}s_per_node_by_cpu']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=8, help="containers started at once")
    parser.add_argument("--vms", type=int, default=3, help="VM clones restored at once")
    parser.add_argument("--window", type=float, default=5.0, help="seconds of idle CPU measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("density: needs root (runc, QEMU, taps, network namespaces)")

    def log(line: str) -> None:
        print(f"density: {line}", file=sys.stderr, flush=True)

    oci_ref = python_http_image()
    with tempfile.TemporaryDirectory(prefix="rik-densbench-") as tmp:
        workdir = Path(tmp)
        registry = start_registry(workdir / "registry")
        try:
            image = push_oci(oci_ref, registry.address)
            options = ["--subnet", SUBNET, "--insecure-registry", registry.address]
            with (
                controller(workdir) as url,
                riklet(workdir, url, "densbench", BRIDGE, *options, guest_dir=GUEST_DIR) as data_dir,
            ):

                async def run() -> dict[str, Any]:
                    http = httpx.AsyncClient(timeout=1, limits=httpx.Limits(max_keepalive_connections=0))
                    async with RikClient(url, timeout=60) as client, http:
                        rik = Rik(url, image, data_dir, client, http)
                        try:
                            return await measure(rik, args.instances, args.vms, args.window, log)
                        finally:
                            for name in ("dens-ctr", "dens-clones", "dens-boot"):
                                await rik.delete(name)
                            await rik.delete_snapshot()

                figures = asyncio.run(run())
        finally:
            stop_registry(registry)
    figures["window_s"] = args.window
    node_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 - RESERVED_MIB
    figures.update(per_node(figures, node_mib, os.cpu_count() or 1))
    f = figures
    report(
        f"density: instances of the Python HTTP image per node ({f['node_cores']} cores, {node_mib:.0f} MiB)",
        [
            ("containers started / all serving", f"{f['containers_started']} in {f['containers_all_serving_s']:.1f} s"),
            ("restored VMs started / all serving", f"{f['vms_started']} in {f['vms_all_serving_s']:.1f} s"),
            (
                "PSS per container / restored VM (median)",
                f"{f['container_pss_median_mib']:.1f} / {f['vm_pss_median_mib']:.1f} MiB",
            ),
            ("PSS of the booted VM", f"{f['booted_vm_pss_mib']:.1f} MiB"),
            (
                "idle CPU per container / restored VM",
                f"{f['container_idle_cpu_median'] * 100:.2f} / {f['vm_idle_cpu_median'] * 100:.2f} % of a core",
            ),
            (
                "containers per node: by memory / by CPU",
                f"{f['containers_per_node_by_memory']} / {_cpu(f, 'container')}",
            ),
            ("VMs per node: by memory / by CPU", f"{f['vms_per_node_by_memory']} / {_cpu(f, 'vm')}"),
            (
                "scheduler's limit from requests: containers / VMs",
                f"{f['containers_per_node_scheduler']} / {f['vms_per_node_scheduler']}",
            ),
        ],
        figures,
    )


if __name__ == "__main__":
    main()
