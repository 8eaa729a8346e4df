"""Names of the kernel objects a node network creates.

Every name is derived from the bridge name (unique per riklet on a machine) and a hash of the instance
id, so riklets sharing a machine (or a `/run/netns` directory) never collide, and interface names stay
within the kernel's 15 characters.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

IFNAMSIZ = 15
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def validate_bridge_name(name: str) -> None:
    if not _IFNAME.match(name):
        raise ValueError(f"bridge name {name!r} must be 1-15 characters of [A-Za-z0-9_.-]")


@dataclass(frozen=True)
class InstanceNames:
    netns: str
    host_veth: str
    #: Name of the namespace end until it is moved and renamed to `eth0`.
    peer_veth: str
    #: Tag put in the comment of every iptables rule of the instance.
    rule_tag: str


def instance_names(bridge: str, instance_id: str) -> InstanceNames:
    digest = hashlib.sha256(f"{bridge}\0{instance_id}".encode()).hexdigest()[:10]
    return InstanceNames(
        netns=f"rik-{bridge}-{digest}",
        host_veth=f"vr{digest}",
        peer_veth=f"vp{digest}",
        rule_tag=f"rik-{digest}",
    )


@dataclass(frozen=True)
class ChainNames:
    """iptables chains of one bridge (names ≤ 28 characters)."""

    dnat: str
    postrouting: str
    forward: str
    input: str


def chain_names(bridge: str) -> ChainNames:
    return ChainNames(
        dnat=f"RIK-{bridge}",
        postrouting=f"RIK-{bridge}-POST",
        forward=f"RIK-{bridge}-FWD",
        input=f"RIK-{bridge}-IN",
    )
