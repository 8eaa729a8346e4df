"""The guest link inside an instance's network namespace: a tap with a fixed private /30, port DNAT, NAT out.

Every VM sees the same link (the guest is always 172.30.0.2, its gateway 172.30.0.1 with a fixed MAC), so
clones restored from one memory snapshot all work unchanged: each lives in its own namespace, whose veth
carries the instance's own node address, and DNAT maps that address's declared ports to the guest.
"""

from __future__ import annotations

from collections.abc import Sequence

from rik.drivers.vm._commands import run
from rik.model import PortSpec
from rik.network import NetworkError

TAP = "tap0"
HOST_ADDRESS = "172.30.0.1"
GUEST_ADDRESS = "172.30.0.2"
PREFIXLEN = 30
#: Fixed MACs: a restored guest's ARP cache must stay valid in every clone's namespace.
TAP_MAC = "02:72:69:6b:00:01"
GUEST_MAC = "52:54:00:72:69:6b"
#: The namespace's uplink (NodeNetwork names it eth0).
UPLINK = "eth0"


def nat_rules(ports: Sequence[PortSpec]) -> str:
    """An `iptables-restore` document for the namespace's nat table."""
    lines = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
    ]
    for port in ports:
        lines.append(
            f"-A PREROUTING -i {UPLINK} -p {port.protocol} -m {port.protocol} --dport {port.port}"
            f" -j DNAT --to-destination {GUEST_ADDRESS}:{port.port}"
        )
    lines.append(f"-A POSTROUTING -s {GUEST_ADDRESS}/32 -o {UPLINK} -j MASQUERADE")
    lines += ["COMMIT", ""]
    return "\n".join(lines)


async def setup_guest_link(netns: str, netns_path: str, ports: Sequence[PortSpec], *, create_tap: bool = True) -> None:
    """Configure the tap (creating it first unless `create_tap` is False: QEMU, started in the namespace
    already, made it), route between it and the uplink, DNAT `ports` to the guest.

    The guest's neighbour entry is permanent (its MAC is fixed): the first packet to a guest that was just
    restored from a snapshot, whose CPU runs cold under TCG, need not wait for it to answer ARP first."""
    batch = "\n".join(
        [
            f"link set {TAP} address {TAP_MAC}",
            f"addr replace {HOST_ADDRESS}/{PREFIXLEN} dev {TAP}",
            f"link set {TAP} up",
            f"neigh replace {GUEST_ADDRESS} lladdr {GUEST_MAC} dev {TAP} nud permanent",
            "",
        ]
    )
    if create_tap and not (await run("ip", "-n", netns, "link", "show", TAP)).ok:
        batch = f"tuntap add dev {TAP} mode tap\n{batch}"
    result = await run("ip", "-n", netns, "-batch", "-", stdin=batch)
    if not result.ok:
        raise NetworkError("TapFailed", f"cannot set up the guest tap in {netns}: {result.last_line()}")
    script = "echo 1 > /proc/sys/net/ipv4/ip_forward && exec iptables-restore -w"
    result = await run("nsenter", f"--net={netns_path}", "sh", "-c", script, stdin=nat_rules(ports))
    if not result.ok:
        raise NetworkError("IptablesFailed", f"cannot set up NAT in {netns}: {result.last_line()}")
