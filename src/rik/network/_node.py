"""`NodeNetwork`: a riklet's bridge, its instances' namespaces and veths, and host-port forwarding.

Port forwarding uses iptables NAT in chains named after the bridge (so several riklets on one machine
do not step on each other):

* `nat/RIK-<br>` — one DNAT rule per exposed port, jumped to from PREROUTING (traffic from other hosts
  and from instances) and OUTPUT (traffic from the node itself) for local destination addresses;
* `nat/RIK-<br>-POST` — masquerades instance traffic leaving the node, hairpin traffic (an instance
  reaching a host port that leads back onto the bridge) and loopback-sourced traffic (when the host
  address is 127.0.0.1, which also needs `route_localnet` on the bridge);
* `filter/RIK-<br>-FWD` — accepts forwarding to and from the bridge on hosts whose FORWARD policy drops;
* `filter/RIK-<br>-IN` — with `route_localnet`, stops instances from reaching the node's loopback services.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rik.model import PortBinding, PortSpec
from rik.network import _links as links
from rik.network._errors import NetworkError
from rik.network._iptables import Iptables
from rik.network._names import chain_names, instance_names, validate_bridge_name
from rik.network._state import InstanceRecord, NetworkState

logger = logging.getLogger(__name__)

_NAT = "nat"
_FILTER = "filter"


@dataclass(frozen=True)
class Attachment:
    """An instance's place on the node network."""

    instance_id: str
    netns_name: str
    netns_path: str
    ip: str
    gateway: str
    prefixlen: int
    host_veth: str


class NodeNetwork:
    """The network of one riklet: a bridge with `subnet`, reachable instances, host ports.

    Everything happens in the network namespace the riklet runs in; all methods are idempotent.
    """

    def __init__(
        self,
        bridge_name: str,
        subnet: ipaddress.IPv4Network,
        state_dir: Path,
        host_address: str,
        port_range: tuple[int, int] = (30000, 32767),
    ) -> None:
        validate_bridge_name(bridge_name)
        if subnet.prefixlen > 30:
            raise ValueError(f"subnet {subnet} is too small for instances")
        low, high = port_range
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad port range {port_range}")
        self.bridge = bridge_name
        self.subnet = subnet
        self.gateway = str(subnet.network_address + 1)
        self.host_address = host_address
        self.port_range = port_range
        self._state = NetworkState(state_dir, subnet, port_range)
        self._iptables = Iptables()
        self._chains = chain_names(bridge_name)
        # Serializes this process's changes to iptables (rule checks are read-then-write).
        self._lock = asyncio.Lock()

    @property
    def _loopback_host(self) -> bool:
        return ipaddress.ip_address(self.host_address).is_loopback

    # Node-wide ------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the bridge, enable forwarding and NAT. Safe to call on every riklet start."""
        await links.ensure_bridge(self.bridge, self.gateway, self.subnet.prefixlen)
        await asyncio.to_thread(_write_sysctl, "net/ipv4/ip_forward", "1")
        if self._loopback_host:
            await asyncio.to_thread(_write_sysctl, f"net/ipv4/conf/{self.bridge}/route_localnet", "1")
        c, br, subnet = self._chains, self.bridge, str(self.subnet)
        async with self._lock:
            ipt = self._iptables
            for table, chain in ((_NAT, c.dnat), (_NAT, c.postrouting), (_FILTER, c.forward), (_FILTER, c.input)):
                await ipt.ensure_chain(table, chain)
            local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", c.dnat]
            await ipt.ensure_rule(_NAT, "PREROUTING", local, first=True)
            await ipt.ensure_rule(_NAT, "OUTPUT", local, first=True)
            await ipt.ensure_rule(_NAT, "POSTROUTING", ["-j", c.postrouting], first=True)
            await ipt.ensure_rule(_FILTER, "FORWARD", ["-j", c.forward], first=True)
            await ipt.ensure_rule(_FILTER, "INPUT", ["-j", c.input], first=True)
            for rule in (
                ["-s", subnet, "!", "-o", br, "-j", "MASQUERADE"],
                ["-s", subnet, "-o", br, "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE"],
                ["-s", "127.0.0.0/8", "-o", br, "-j", "MASQUERADE"],
            ):
                await ipt.ensure_rule(_NAT, c.postrouting, rule)
            for rule in (["-i", br, "-j", "ACCEPT"], ["-o", br, "-j", "ACCEPT"]):
                await ipt.ensure_rule(_FILTER, c.forward, rule)
            # Replies to loopback-sourced connections (de-NATed to 127.0.0.1) are ESTABLISHED and pass.
            loopback_from_bridge = ["-i", br, "-d", "127.0.0.0/8", "-m", "conntrack"]
            await ipt.ensure_rule(
                _FILTER, c.input, [*loopback_from_bridge, "!", "--ctstate", "RELATED,ESTABLISHED", "-j", "DROP"]
            )
        # Re-create the port forwarding of instances recorded before a restart (rules are idempotent).
        for instance_id, record in (await asyncio.to_thread(self._state.instances)).items():
            if record.ports:
                await self._add_dnat(instance_id, record)
        logger.info("node network ready", extra={"bridge": br, "subnet": subnet})

    async def teardown(self) -> None:
        """Release every instance, then remove the chains and the bridge."""
        for instance_id in await self.attachments():
            await self.release(instance_id)
        c = self._chains
        async with self._lock:
            ipt = self._iptables
            local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", c.dnat]
            await ipt.delete_rule(_NAT, "PREROUTING", local)
            await ipt.delete_rule(_NAT, "OUTPUT", local)
            await ipt.delete_rule(_NAT, "POSTROUTING", ["-j", c.postrouting])
            await ipt.delete_rule(_FILTER, "FORWARD", ["-j", c.forward])
            await ipt.delete_rule(_FILTER, "INPUT", ["-j", c.input])
            for table, chain in ((_NAT, c.dnat), (_NAT, c.postrouting), (_FILTER, c.forward), (_FILTER, c.input)):
                await ipt.delete_chain(table, chain)
        await links.delete_link(self.bridge)
        await asyncio.to_thread(self._state.clear)
        logger.info("node network removed", extra={"bridge": self.bridge})

    async def attachments(self) -> list[str]:
        """Ids of the instances this network holds resources for (to garbage-collect after a restart)."""
        return sorted((await asyncio.to_thread(self._state.instances)).keys())

    # Per instance ---------------------------------------------------------------------------------------

    async def attach(self, instance_id: str) -> Attachment:
        """Give `instance_id` a network namespace with an address on the bridge and a default route.

        Idempotent: an instance that is already attached gets its attachment back unchanged.

        The address is recorded before anything is created, so `release` finds whatever a crash in the
        middle left behind. On failure everything created so far is released.
        """
        known = await asyncio.to_thread(self._state.get, instance_id)
        if known is not None and links.netns_path(known.netns).exists() and await links.link_exists(known.host_veth):
            return self._attachment(instance_id, known)
        await self.create_namespace(instance_id)
        return await self.connect_namespace(instance_id)

    async def create_namespace(self, instance_id: str) -> Attachment:
        """The first half of `attach`: record an address and create an empty namespace (no link yet), so a
        process can be started in it while `connect_namespace` wires it to the bridge. A namespace left by
        an earlier attempt is replaced. On failure everything created so far is released."""
        names = instance_names(self.bridge, instance_id)
        record = await asyncio.to_thread(self._state.allocate_address, instance_id, names.netns, names.host_veth)
        try:
            await links.delete_netns(names.netns)  # start clean if an earlier attempt left one
            await links.ensure_netns(names.netns)
        except BaseException:
            await self.release(instance_id)
            raise
        return self._attachment(instance_id, record)

    async def connect_namespace(self, instance_id: str) -> Attachment:
        """The second half of `attach`: the veth pair to the bridge, the address and the default route in
        the namespace `create_namespace` made. On failure everything created so far is released."""
        record = await asyncio.to_thread(self._state.get, instance_id)
        if record is None or not links.netns_path(record.netns).exists():
            raise NetworkError("NotAttached", f"instance {instance_id} has no network namespace")
        names = instance_names(self.bridge, instance_id)
        try:
            await links.create_veth(names.host_veth, names.peer_veth, names.netns, self.bridge)
            await links.configure_namespace(
                names.netns, names.peer_veth, record.ip, self.subnet.prefixlen, self.gateway
            )
        except BaseException:
            await self.release(instance_id)
            raise
        logger.info("attached instance", extra={"instance": instance_id, "ip": record.ip})
        return self._attachment(instance_id, record)

    async def attachment(self, instance_id: str) -> Attachment | None:
        """The recorded attachment of `instance_id`, if any (its namespace may be gone)."""
        record = await asyncio.to_thread(self._state.get, instance_id)
        return None if record is None else self._attachment(instance_id, record)

    async def expose(self, instance_id: str, ip: str, ports: Sequence[PortSpec]) -> list[PortBinding]:
        """Forward a host port on `host_address` to each of `ports` of the instance at `ip`."""
        wanted: list[tuple[int, str, int | None]] = [(p.port, p.protocol, p.host_port) for p in ports]
        await asyncio.to_thread(self._state.allocate_ports, instance_id, wanted)
        record = await asyncio.to_thread(self._state.get, instance_id)
        if record is None:
            raise NetworkError("NotAttached", f"instance {instance_id} has no network attachment")
        if record.ip != ip:
            raise NetworkError("NotAttached", f"instance {instance_id} has address {record.ip}, not {ip}")
        await self._remove_dnat(instance_id)
        await self._add_dnat(instance_id, record)
        return [PortBinding(port=p.port, protocol=p.protocol, host_port=p.host_port) for p in record.ports]

    async def release(self, instance_id: str) -> None:
        """Remove the instance's port forwarding, veth pair and namespace, and free its address."""
        names = instance_names(self.bridge, instance_id)
        await self._remove_dnat(instance_id)
        await links.delete_link(names.host_veth)
        await links.delete_netns(names.netns)
        await asyncio.to_thread(self._state.forget, instance_id)
        logger.info("released instance network", extra={"instance": instance_id})

    # Internals ------------------------------------------------------------------------------------------

    def _attachment(self, instance_id: str, record: InstanceRecord) -> Attachment:
        return Attachment(
            instance_id=instance_id,
            netns_name=record.netns,
            netns_path=str(links.netns_path(record.netns)),
            ip=record.ip,
            gateway=self.gateway,
            prefixlen=self.subnet.prefixlen,
            host_veth=record.host_veth,
        )

    def _dnat_rules(self, instance_id: str, record: InstanceRecord) -> list[list[str]]:
        tag = instance_names(self.bridge, instance_id).rule_tag
        destination = [] if self.host_address in ("0.0.0.0", "") else ["-d", f"{self.host_address}/32"]
        return [
            [
                *destination,
                "-p",
                p.protocol,
                "-m",
                p.protocol,
                "--dport",
                str(p.host_port),
                "-m",
                "comment",
                "--comment",
                tag,
                "-j",
                "DNAT",
                "--to-destination",
                f"{record.ip}:{p.port}",
            ]
            for p in record.ports
        ]

    async def _add_dnat(self, instance_id: str, record: InstanceRecord) -> None:
        async with self._lock:
            for rule in self._dnat_rules(instance_id, record):
                await self._iptables.ensure_rule(_NAT, self._chains.dnat, rule)

    async def _remove_dnat(self, instance_id: str) -> None:
        tag = instance_names(self.bridge, instance_id).rule_tag
        async with self._lock:
            for rule in await self._iptables.rules(_NAT, self._chains.dnat):
                if _comment(rule) == tag:
                    await self._iptables.delete_rule(_NAT, self._chains.dnat, rule)


def _comment(rule: list[str]) -> str | None:
    for index, word in enumerate(rule[:-1]):
        if word == "--comment":
            return rule[index + 1]
    return None


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name
    if path.read_text().strip() != value:
        path.write_text(value)
