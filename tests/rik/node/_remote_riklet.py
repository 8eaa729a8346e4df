"""Run inside `ip netns exec HOST`: a node (network + container driver) standing for another host.

Prints one JSON line with the started instance's address and host port, waits for a line on stdin,
then destroys the instance and tears the network down. Used by test_network.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from pathlib import Path

from rik.drivers.base import InstanceRequest
from rik.drivers.container import ContainerDriver
from rik.images import ImageStore
from rik.model import PortSpec, WorkloadSpec
from rik.network import NodeNetwork


async def _progress(stage: str, message: str) -> None:
    pass


async def main(root: str, bridge: str, subnet: str, host_address: str, image: str) -> None:
    network = NodeNetwork(bridge, ipaddress.IPv4Network(subnet), Path(root) / "network", host_address)
    await network.setup()
    driver = ContainerDriver(Path(root) / "driver", network, ImageStore(Path(root) / "images"))
    try:
        spec = WorkloadSpec(image=image, ports=[PortSpec(port=80)])
        handle = await driver.start(InstanceRequest(id="remote-1", workload="w", spec=spec), _progress)
        print(json.dumps({"ip": handle.address, "host_port": handle.ports[0].host_port}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await driver.destroy(handle)
    finally:
        await network.teardown()
    print(json.dumps({"done": True}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
