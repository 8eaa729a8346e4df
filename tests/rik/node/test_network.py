"""Node network: persisted allocations (unit) and reachability from another host (e2e)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rik.network import NetworkError, NodeNetwork
from rik.network._names import chain_names, instance_names
from rik.network._state import NetworkState
from tests.support.http import http_get

from .conftest import INDEX_HTML

SUBNET = ipaddress.IPv4Network("10.9.0.0/29")


def test_names_fit_the_kernel_limits_and_differ_between_bridges() -> None:
    a, b = instance_names("rik0", "web-1"), instance_names("rik1", "web-1")
    assert len(a.host_veth) <= 15 and len(a.peer_veth) <= 15
    assert a.netns.startswith("rik-rik0-")
    assert len({a.netns, b.netns}) == 2 and len({a.host_veth, b.host_veth}) == 2
    assert all(len(c) <= 28 for c in vars(chain_names("a-bridge-name15")).values())


def test_addresses_persist_and_are_not_reused_at_once(tmp_path: Path) -> None:
    state = NetworkState(tmp_path, SUBNET, (30000, 30002))
    first = state.allocate_address("a", "ns-a", "va")
    assert first.ip == "10.9.0.2"  # .1 is the bridge
    assert state.allocate_address("a", "ns-a", "va") == first  # idempotent

    restarted = NetworkState(tmp_path, SUBNET, (30000, 30002))
    assert restarted.allocate_address("b", "ns-b", "vb").ip == "10.9.0.3"
    restarted.forget("a")
    assert restarted.allocate_address("c", "ns-c", "vc").ip == "10.9.0.4"
    assert [restarted.allocate_address(n, f"ns-{n}", f"v{n}").ip for n in "def"] == [
        "10.9.0.5",
        "10.9.0.6",
        "10.9.0.2",  # wrapped around to the freed address
    ]
    with pytest.raises(NetworkError) as caught:
        restarted.allocate_address("g", "ns-g", "vg")
    assert caught.value.reason == "AddressPoolExhausted"


def test_host_ports_are_allocated_and_conflicts_refused(tmp_path: Path) -> None:
    state = NetworkState(tmp_path, SUBNET, (30000, 30002))
    state.allocate_address("a", "ns-a", "va")
    state.allocate_address("b", "ns-b", "vb")
    ports = state.allocate_ports("a", [(80, "tcp", None), (53, "udp", None), (81, "tcp", 40000)])
    assert [(p.port, p.protocol, p.host_port) for p in ports] == [
        (80, "tcp", 30000),
        (53, "udp", 30001),
        (81, "tcp", 40000),
    ]
    # Re-exposing the same ports keeps their host ports.
    assert state.allocate_ports("a", [(80, "tcp", None)])[0].host_port == 30000
    with pytest.raises(NetworkError) as caught:
        state.allocate_ports("b", [(80, "tcp", 30000)])
    assert caught.value.reason == "PortConflict"
    assert state.allocate_ports("b", [(80, "udp", 30000)])[0].host_port == 30000  # other protocol


@pytest.fixture
def other_host(image_ref: str) -> Iterator[str]:
    """A network namespace standing for a second host at 10.233.0.2, linked to the root namespace."""
    suffix = os.getpid() % 100000
    host_ns, outer, inner = f"rikt-host-{suffix}", f"rkh{suffix}", f"rkb{suffix}"

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    run("ip", "netns", "add", host_ns)
    try:
        run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", host_ns)
        run("ip", "addr", "add", "10.233.0.1/30", "dev", outer)
        run("ip", "link", "set", outer, "up")
        for command in (f"addr add 10.233.0.2/30 dev {inner}", f"link set {inner} up", "link set lo up"):
            run("ip", "-n", host_ns, *command.split())
        run("ip", "-n", host_ns, "route", "add", "default", "via", "10.233.0.1")
        yield host_ns
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", host_ns], capture_output=True)


@pytest.mark.e2e
async def test_instance_is_reachable_from_another_host(tmp_path: Path, image_ref: str, other_host: str) -> None:
    """A riklet running inside `ip netns exec HOST` (another host) exposes a port that a client in
    the root namespace reaches at HOST's address; its teardown leaves nothing in HOST."""
    bridge = f"riktb{os.getpid() % 100000}"
    script = Path(__file__).with_name("_remote_riklet.py")
    args = [str(tmp_path), bridge, "10.234.0.0/24", "10.233.0.2", image_ref]
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", other_host, sys.executable, str(script), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        started = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert started["ip"].startswith("10.234.0.")
        assert await http_get(f"http://10.233.0.2:{started['host_port']}/") == (200, INDEX_HTML)
    finally:
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        done = await asyncio.wait_for(proc.stdout.readline(), 30)
        await proc.wait()
    assert json.loads(done) == {"done": True}
    check = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", other_host, "sh", "-c", "ip -o link; iptables-save",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    leftovers = (await check.communicate())[0].decode()
    assert bridge not in leftovers and "RIK-" not in leftovers


@pytest.mark.e2e
async def test_attach_and_release_are_idempotent(tmp_path: Path, image_ref: str) -> None:
    network = NodeNetwork(f"rikti{os.getpid() % 100000}", ipaddress.IPv4Network("10.235.0.0/24"), tmp_path, "127.0.0.1")
    await network.setup()
    await network.setup()
    try:
        first = await network.attach("same-1")
        assert await network.attach("same-1") == first
        assert Path(first.netns_path).exists()
        await network.release("same-1")
        await network.release("same-1")
        assert not Path(first.netns_path).exists()
        assert await network.attachments() == []
    finally:
        await network.teardown()
        await network.teardown()


@pytest.mark.e2e
async def test_a_namespace_is_usable_before_it_is_connected(tmp_path: Path, image_ref: str) -> None:
    """`create_namespace` + `connect_namespace` (a VM restore starts QEMU between the two) end like `attach`."""
    network = NodeNetwork(f"riktn{os.getpid() % 100000}", ipaddress.IPv4Network("10.236.0.0/24"), tmp_path, "127.0.0.1")
    await network.setup()
    try:
        with pytest.raises(NetworkError) as caught:
            await network.connect_namespace("split-1")
        assert caught.value.reason == "NotAttached"
        created = await network.create_namespace("split-1")
        assert Path(created.netns_path).exists()
        assert "eth0" not in await _ip_output("-n", created.netns_name, "-o", "link")
        connected = await network.connect_namespace("split-1")
        assert connected == created
        assert await network.attach("split-1") == created  # already attached: unchanged
        assert f"inet {created.ip}/24" in await _ip_output("-n", created.netns_name, "-o", "addr", "show", "eth0")
        await network.release("split-1")
        assert not Path(created.netns_path).exists()
        assert await network.attachments() == []
    finally:
        await network.teardown()


async def _ip_output(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec("ip", *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, args
    return out.decode()
