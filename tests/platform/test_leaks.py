"""Instance cycles (provision through Morty, invoke through a gateway replica, delete) of a third instance of
the warm function (on the node that runs neither of its two others) leave nothing behind
on the hosts: no container, network namespace, veth, mount, cgroup, iptables rule or QEMU process beyond what
ran before them; and every service's open file descriptors and resident memory stay flat after warm-up.
Quick form: 20 cycles; `--full`: 1,000."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.rik.e2e._cluster import cgroup_dirs, netns_names, qemu_processes, sh

from ._platform import Platform
from .conftest import Deployed

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]
WARM_UP = 3
FD_SLACK = 5
RSS_SLACK_KIB = 8 * 1024


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


async def test_instance_cycles_leak_nothing(platform: Platform, deployed: Deployed, full: bool) -> None:
    cycles = 1000 if full else 20
    async with platform.api() as api, httpx.AsyncClient(timeout=30, trust_env=False) as client:
        patched = await api.patch(f"/v1/functions/{deployed.name}", json={"max_instances": 3})
        assert patched.status_code == 200, patched.text
        try:
            for n in range(WARM_UP):
                await _cycle(api, client, deployed, n)
            await _settled(platform, deployed)
            host_before, usage_before = _host_state(platform), _usage(platform)
            for n in range(cycles):
                await _cycle(api, client, deployed, n)
            await _settled(platform, deployed)
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
