"""Remove everything a riklet left on this host, without the riklet (which may be dead or killed).

Run as ``python _scrub.py DATA_DIR BRIDGE SUBNET ADDRESS`` in the root namespace: the container driver
destroys every instance it can find a trace of (instance records, driver directories, network
attachments, containers in the runc root), then the node network is torn down. For a riklet that ran
inside another network namespace, the bridge, veths and iptables chains there go away with that
namespace; what is global (processes, cgroups, /run/netns entries, files) is removed here.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path

from rik.drivers.base import Handle
from rik.drivers.container import ContainerDriver
from rik.images import ImageStore
from rik.network import NodeNetwork
from rik.riklet.records import RecordStore


def _runc_containers(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    proc = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=False)
    return proc.stdout.split() if proc.returncode == 0 else []


async def scrub(data_dir: Path, bridge: str, subnet: str, address: str) -> list[str]:
    network = NodeNetwork(bridge, IPv4Network(subnet), data_dir / "network", host_address=address)
    driver = ContainerDriver(data_dir / "containers", network, ImageStore(data_dir / "images"))
    records = RecordStore(data_dir / "instances")
    known = records.load_all()
    ids = set(known) | set(await driver.instance_ids()) | set(await network.attachments())
    ids |= set(_runc_containers(data_dir / "containers" / "runtime" / "runc"))
    for instance_id in sorted(ids):
        state = known[instance_id].state if instance_id in known else {}
        await driver.destroy(Handle(id=instance_id, driver="container", state=state))
        records.remove(instance_id)
    await network.teardown()
    return sorted(ids)


if __name__ == "__main__":
    destroyed = asyncio.run(scrub(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
    print(json.dumps({"destroyed": destroyed}))
