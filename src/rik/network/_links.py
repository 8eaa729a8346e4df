"""Bridges, veth pairs and network namespaces.

Links in the riklet's own namespace go through pyroute2's `AsyncIPRoute` (netlink, no subprocess).
Namespaces are created and configured with `ip netns add` and one `ip -n NS -batch -` per instance:
pyroute2 enters a namespace by forking the (multi-threaded) Python process, which a single short `ip`
process avoids. Both operate in the namespace the riklet runs in, so a riklet started with
`ip netns exec HOST riklet …` builds its network inside HOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError

from rik.network._errors import NetworkError

logger = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
_ENODEV = 19
_EEXIST = 17


async def _ip(*args: str, stdin: str | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace").strip()


async def _index(ipr: AsyncIPRoute, name: str) -> int | None:
    try:
        links = await ipr.link("get", ifname=name)
    except NetlinkError as exc:
        if exc.code == _ENODEV:
            return None
        raise
    for link in links:
        return int(link["index"])
    return None


async def link_exists(name: str) -> bool:
    async with AsyncIPRoute() as ipr:
        return await _index(ipr, name) is not None


async def ensure_bridge(name: str, address: str, prefixlen: int) -> None:
    """Create bridge `name` if needed, give it `address/prefixlen` and bring it up."""
    try:
        async with AsyncIPRoute() as ipr:
            index = await _index(ipr, name)
            if index is None:
                with contextlib.suppress(NetlinkError):  # lost a race with another creator
                    await ipr.link("add", ifname=name, kind="bridge")
                index = await _index(ipr, name)
                assert index is not None
            present = [(a.get("address"), a["prefixlen"]) async for a in await ipr.addr("dump", index=index)]
            if (address, prefixlen) not in present:
                await ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            await ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise NetworkError("BridgeFailed", f"cannot set up bridge {name}: {exc}") from exc


async def delete_link(name: str) -> None:
    """Delete interface `name` (deleting one end of a veth pair deletes both); missing is fine."""
    async with AsyncIPRoute() as ipr:
        index = await _index(ipr, name)
        if index is not None:
            with contextlib.suppress(NetlinkError):
                await ipr.link("del", index=index)


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


async def ensure_netns(name: str) -> None:
    if netns_path(name).exists():
        return
    code, out = await _ip("netns", "add", name)
    if code != 0 and not netns_path(name).exists():
        raise NetworkError("NetnsFailed", f"cannot create network namespace {name}: {out}")


async def delete_netns(name: str) -> None:
    if netns_path(name).exists():
        code, out = await _ip("netns", "delete", name)
        if code != 0:
            logger.warning("cannot delete network namespace %s: %s", name, out)


async def create_veth(host: str, peer: str, netns: str, bridge: str) -> None:
    """Create a veth pair with `peer` inside `netns` and `host` up on `bridge`; replaces a stale pair."""
    await delete_link(host)
    try:
        async with AsyncIPRoute() as ipr:
            bridge_index = await _index(ipr, bridge)
            if bridge_index is None:
                raise NetworkError("BridgeFailed", f"bridge {bridge} does not exist; call setup() first")
            await ipr.link(
                "add",
                ifname=host,
                kind="veth",
                peer={"ifname": peer, "net_ns_fd": str(netns_path(netns))},
            )
            index = await _index(ipr, host)
            assert index is not None
            await ipr.link("set", index=index, master=bridge_index, state="up")
    except NetlinkError as exc:
        raise NetworkError("VethFailed", f"cannot create veth {host}: {exc}") from exc


async def configure_namespace(netns: str, peer: str, address: str, prefixlen: int, gateway: str) -> None:
    """Inside `netns`: rename `peer` to eth0, address it, bring it and lo up, route via `gateway`."""
    commands = "\n".join(
        [
            f"link set {peer} name eth0",
            f"addr add {address}/{prefixlen} dev eth0",
            "link set lo up",
            "link set eth0 up",
            f"route replace default via {gateway} dev eth0",
            "",
        ]
    )
    code, out = await _ip("-n", netns, "-batch", "-", stdin=commands)
    if code != 0:
        raise NetworkError("NetnsFailed", f"cannot configure network namespace {netns}: {out}")
