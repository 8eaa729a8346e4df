"""Instance cycles leave nothing behind on the hosts: no container, network namespace, veth, tap, mount,
cgroup, iptables rule or QEMU process beyond what ran before them, and no cached VM root disk beyond the
riklets' cache cap; every service's open file descriptors and resident memory stay flat after warm-up.

Container cycles provision a third instance of the warm function through Morty (on the node that runs neither
of its two others), invoke it through a gateway replica and delete it. VM cycles, fewer (QEMU runs under TCG
here, each boot seconds of CPU), go through RIK's API: a VM workload of the e2e busybox image, each with
another disk size so each builds a new cached root disk and the cache (capped at `VM_DISK_CACHE_MIB`, one
disk's worth) must evict. Quick form: 20 container and 2 VM cycles; `--full`: 1,000 and 100."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from rik.model import Phase
from tests.rik.e2e._cluster import cgroup_dirs, netns_names, qemu_processes, sh
from tests.rik.e2e.conftest import INDEX_HTML

from ._platform import VM_DISK_CACHE_MIB, Platform
from ._record import record
from .conftest import LONG_TIMEOUT_S, Deployed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(LONG_TIMEOUT_S)]
WARM_UP = 3
FD_SLACK = 5
RSS_SLACK_KIB = 8 * 1024
VM_BOOT_TIMEOUT = 120.0
"""A TCG boot takes ~5 s alone, longer on a shared machine."""
MIB = 1024 * 1024
VM_DISK_MIB = 96
"""The first VM cycle's disk size (the e2e image needs ≥ 68 MiB); each cycle's is one MiB more."""
VM_MEMORY_MIB = 2048 - 128 + 1
"""More than a node running one of the function's instances (128 MiB of its 2,048) has left: every VM goes to
the node without one, so its one disk cache sees every cycle's disk."""


def _host_state(platform: Platform) -> dict[str, Any]:
    """What instances leave on the hosts, by kind (a set each, so before/after compare exactly)."""
    cluster = platform.cluster
    ours = tuple(f"rik-{r.bridge}-" for r in cluster.riklets.values())  # not other riklets on the machine
    state: dict[str, Any] = {"netns": {n for n in netns_names() if n.startswith(ours)}}
    for riklet in cluster.riklets.values():
        assert riklet.netns is not None
        pid = riklet.proc.pid
        state[f"{riklet.name} links"] = {
            line.split(":", 2)[1].strip().split("@")[0]
            for line in sh("ip", "-n", riklet.netns.name, "-o", "link").splitlines()
        }
        state[f"{riklet.name} mounts"] = {
            line for line in Path(f"/proc/{pid}/mounts").read_text().splitlines() if str(riklet.data_dir) in line
        }
        state[f"{riklet.name} cgroups"] = {
            str(child) for d in cgroup_dirs(riklet.cgroup_parent) for child in d.iterdir() if child.is_dir()
        }
        rules = sh("ip", "netns", "exec", riklet.netns.name, "iptables-save").splitlines()
        state[f"{riklet.name} iptables"] = {line for line in rules if line.startswith("-A")}
        state[f"{riklet.name} qemu"] = set(qemu_processes(str(riklet.vm_dir)))
    return state


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def _usage(platform: Platform) -> dict[str, tuple[int, int]]:
    """(open file descriptors, VmRSS KiB) of every service process, gateway workers included."""
    cluster = platform.cluster
    procs = {p.name: p.pid for p in cluster.processes()}
    for gateway in platform.gateways:
        for n, child in enumerate(_children(gateway.proc.pid)):
            procs[f"{gateway.proc.name} worker {n}"] = child
    usage = {}
    for name, pid in procs.items():
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        usage[name] = (fds, rss)
    return usage


async def _cycle(api: httpx.AsyncClient, client: httpx.AsyncClient, deployed: Deployed, n: int) -> None:
    created = await api.post(f"/v1/functions/{deployed.name}/instances")
    assert created.status_code == 201, created.text
    answer = await client.get(deployed.paths[n % len(deployed.paths)], params={"n": str(n)})
    assert answer.status_code == 200 and answer.json()["n"] == str(n), answer.text
    deleted = await api.delete(f"/v1/functions/{deployed.name}/instances/{created.json()['id']}")
    assert deleted.status_code == 204, deleted.text


async def _settled(platform: Platform, deployed: Deployed) -> None:
    """Until RIK runs just the function's two warm instances (deletion is asynchronous on the riklets)."""
    async with platform.cluster.client() as client:
        for _ in range(200):
            mine = [i for i in (await client.list_instances()).items if i.workload.startswith(f"{deployed.name}-")]
            if len(mine) == 2:
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"instances of {deployed.name}: {mine}")


async def _vm_cycle(platform: Platform, image: str, client: httpx.AsyncClient, n: int) -> None:
    """A VM workload booted, asked for its page and deleted through RIK; its disk size (a cache key) is n's."""
    cluster, name = platform.cluster, f"leak-vm-{n}"
    manifest = {
        "apiVersion": "rik/v1",
        "kind": "VM",
        "metadata": {"name": name},
        "spec": {
            "image": image, "ports": [{"port": 8080}], "resources": {"cpu": 100, "memory": VM_MEMORY_MIB},
            "vm": {"disk_size": VM_DISK_MIB + n},
        },
    }  # fmt: skip
    async with cluster.client() as rik:
        await rik.create_workload(manifest)
        try:
            [instance] = [
                i
                for i in await cluster.wait_instances(
                    lambda items: any(i.workload == name and i.phase in (Phase.RUNNING, Phase.FAILED) for i in items),
                    f"{name} to run",
                    timeout=VM_BOOT_TIMEOUT,
                )
                if i.workload == name
            ]
            assert instance.phase == Phase.RUNNING and instance.ports and instance.ports[0].host_port, instance
            answer = await client.get(f"http://{instance.host_address}:{instance.ports[0].host_port}/")
            assert answer.status_code == 200 and answer.text == INDEX_HTML, answer.text
        finally:
            await rik.delete_workload(name)
    await cluster.wait_instances(lambda items: all(i.workload != name for i in items), f"{name} gone", timeout=60)


def _disk_cache(platform: Platform) -> dict[str, list[int]]:
    """Bytes of each cached VM root disk, by riklet."""
    return {
        riklet.name: [p.stat().st_blocks * 512 for p in (riklet.vm_dir / "disks").glob("*.ext4")]
        for riklet in platform.cluster.riklets.values()
    }


async def _cycles(platform: Platform, deployed: Deployed, image: str, containers: int, vms: int) -> None:
    async with platform.api() as api, httpx.AsyncClient(timeout=30, trust_env=False) as client:
        for n in range(containers):
            await _cycle(api, client, deployed, n)
        for n in range(vms):
            await _vm_cycle(platform, image, client, n)
    await _settled(platform, deployed)


async def test_instance_cycles_leak_nothing(platform: Platform, deployed: Deployed, image: str, full: bool) -> None:
    cycles, vm_cycles = (1000, 100) if full else (20, 2)
    vm_image = image.replace(platform.cluster.registry, platform.registry, 1)
    async with platform.api() as api:
        patched = await api.patch(f"/v1/functions/{deployed.name}", json={"max_instances": 3})
        assert patched.status_code == 200, patched.text
        try:
            # The VM warm-up cycle's disk size is the first measured cycle's: it builds no disk of its own.
            await _cycles(platform, deployed, vm_image, WARM_UP, 1)
            host_before, usage_before = _host_state(platform), _usage(platform)
            await _cycles(platform, deployed, vm_image, cycles, vm_cycles)
            host_after, usage_after = _host_state(platform), _usage(platform)
        finally:
            await api.patch(f"/v1/functions/{deployed.name}", json={"max_instances": 2})

    left = {kind: sorted(host_after[kind] - host_before[kind]) for kind in host_after}
    assert not any(left.values()), f"left behind after {cycles} cycles: { {k: v for k, v in left.items() if v} }"
    report = {name: (usage_before[name], usage_after.get(name)) for name in usage_before}
    print(f"fds and RSS (KiB) before/after {cycles} cycles: {report}")
    for name, (fds, rss) in usage_before.items():
        fds_after, rss_after = usage_after[name]
        assert fds_after <= fds + FD_SLACK, f"{name}: {fds} → {fds_after} open file descriptors"
        assert rss_after <= rss + RSS_SLACK_KIB, f"{name}: VmRSS {rss} → {rss_after} KiB"
    disks = _disk_cache(platform)
    print(f"cached VM root disks (bytes) after {vm_cycles} VM cycles, cap {VM_DISK_CACHE_MIB} MiB: {disks}")
    over = {name: sizes for name, sizes in disks.items() if sum(sizes) > VM_DISK_CACHE_MIB * MIB}
    assert not over, f"VM disk cache beyond its cap of {VM_DISK_CACHE_MIB} MiB: {over}"
    kept = sum(len(sizes) for sizes in disks.values())
    assert kept < vm_cycles, f"{vm_cycles} disks built, {kept} kept: the cache evicted none"
    record(
        "leaks",
        "Instance create/invoke/delete cycles leave nothing",
        full=full,
        figures={
            "container cycles (Morty, gateway)": cycles,
            "VM cycles (RIK, a new cached disk each)": vm_cycles,
            "VM root disks kept / cache cap": f"{kept} ({sum(map(sum, disks.values())) / MIB:.1f} MiB) / "
            f"{VM_DISK_CACHE_MIB} MiB",
            "services' fds and RSS": [
                {
                    "service": name,
                    "fds before": fds,
                    "fds after": usage_after[name][0],
                    "RSS KiB before": rss,
                    "RSS KiB after": usage_after[name][1],
                }
                for name, (fds, rss) in usage_before.items()
            ],  # fmt: skip
        },
    )
