"""`riklet`: run the node agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from ipaddress import IPv4Network
from pathlib import Path

import uvicorn

from rik.client import RikClient
from rik.drivers.base import Driver, Handle
from rik.drivers.container import ContainerDriver
from rik.drivers.vm import GuestAssets, VMDriver
from rik.images import ImageStore
from rik.network import NodeNetwork
from rik.riklet.agent import Agent, DriverFactory, RikletSettings
from rik.riklet.api import create_app
from rik.riklet.records import RecordStore
from servicekit import logs

log = logging.getLogger(__name__)
MIB = 1024 * 1024


def detect_address() -> str:
    """The address this host uses to reach others (the source of its default route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def total_memory_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 1024


def parse_labels(values: list[str]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep:
            raise SystemExit(f"riklet: --label {value!r} is not key=value")
        labels[key] = val
    return labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="riklet", description="Run RIK's node agent.")
    parser.add_argument("--name", default=os.environ.get("RIKLET_NAME", socket.gethostname().split(".")[0].lower()))
    parser.add_argument("--controller", default=os.environ.get("RIK_SERVER", "http://127.0.0.1:7700"))
    parser.add_argument("--address", default=None, help="address other hosts reach this node at")
    parser.add_argument("--listen", default="0.0.0.0:7701", help="host:port of the riklet's own API")
    parser.add_argument("--data-dir", type=Path, default=None, help="default /var/lib/rik/riklet-NAME")
    parser.add_argument("--bridge", default="rik0")
    parser.add_argument("--subnet", default=None, help="instance subnet; the controller assigns one if unset")
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) * 1000, help="millicores offered")
    parser.add_argument("--memory", type=int, default=None, help="MiB offered (default: total minus 512)")
    parser.add_argument("--label", action="append", default=[], help="key=value, repeatable")
    parser.add_argument("--insecure-registry", action="append", default=[], help="plain-HTTP registry host:port")
    parser.add_argument("--heartbeat-interval", type=float, default=2.0)
    parser.add_argument("--container-runtime", choices=["runc", "crun"], default=None)
    parser.add_argument(
        "--guest-dir",
        type=Path,
        default=Path("/var/lib/rik/guest"),
        help="guest kernel and initramfs for VMs, provisioned once and shared by the riklets of a machine",
    )
    parser.add_argument("--vm-disk-cache", type=int, default=8192, help="MiB of cached VM root disks")
    parser.add_argument(
        "--image-cache",
        type=int,
        default=10240,
        help="MiB of pulled and unpacked OCI images; least recently used images no instance uses are evicted",
    )
    parser.add_argument("--no-vm", action="store_true", help="offer no VMs (no guest kernel is provisioned)")
    parser.add_argument("--vm-accel", choices=["kvm", "tcg"], default=None, help="skip the acceleration probe")
    parser.add_argument("--log-level", default=os.environ.get("RIK_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--teardown",
        action="store_true",
        help="remove every instance this node runs and its bridge and firewall rules, then exit",
    )
    args = parser.parse_args(argv)

    logs.configure("riklet", args.log_level)
    address = args.address or detect_address()
    host, _, port = args.listen.rpartition(":")
    data_dir = args.data_dir or Path(f"/var/lib/rik/riklet-{args.name}")
    settings = RikletSettings(
        name=args.name,
        address=address,
        riklet_url=f"http://{address}:{port}",
        data_dir=data_dir,
        cpu=args.cpu,
        memory=args.memory or max(256, total_memory_mib() - 512),
        labels=parse_labels(args.label),
        subnet=args.subnet,
        heartbeat_interval=args.heartbeat_interval,
    )

    subnet_file = data_dir / "subnet"
    images = ImageStore(
        data_dir / "images", insecure_registries=args.insecure_registry, limit_bytes=args.image_cache * MIB
    )

    def node_parts(subnet: IPv4Network) -> tuple[NodeNetwork, ContainerDriver, VMDriver]:
        network = NodeNetwork(args.bridge, subnet, data_dir / "network", host_address=address)
        container = ContainerDriver(data_dir / "containers", network, images, runtime=args.container_runtime)
        vm = VMDriver(
            data_dir / "vms",
            network,
            images,
            assets=GuestAssets(args.guest_dir),
            disk_cache_mib=args.vm_disk_cache,
            accel=args.vm_accel,
        )
        return network, container, vm

    async def build_drivers(subnet: IPv4Network) -> Mapping[str, Driver]:
        data_dir.mkdir(parents=True, exist_ok=True)
        subnet_file.write_text(str(subnet))
        network, container, vm = node_parts(subnet)
        await network.setup()
        return {"container": container} if args.no_vm else {"container": container, "vm": vm}

    if args.teardown:
        if not subnet_file.is_file():
            log.info("nothing to tear down", extra={"data_dir": str(data_dir)})
            return
        network, container, vm = node_parts(IPv4Network(subnet_file.read_text().strip()))
        asyncio.run(teardown(settings, network, {"container": container, "vm": vm}, container, vm))
        return
    asyncio.run(serve(settings, args.controller, build_drivers, host or "0.0.0.0", int(port), images))


async def teardown(
    settings: RikletSettings,
    network: NodeNetwork,
    drivers: Mapping[str, Driver],
    container: ContainerDriver,
    vm: VMDriver,
) -> None:
    """Destroy every instance recorded on this node, then the node's network. Instances are not
    reported to the controller: use it when the node leaves the cluster or the platform stops."""
    records = RecordStore(settings.data_dir / "instances")
    for record in records.load_all().values():
        driver = drivers.get(record.driver)
        if driver is None:
            continue
        handle = await driver.recover(record.state) or Handle(id=record.id, driver=record.driver, state=record.state)
        await driver.stop(handle, 2.0)
        await driver.destroy(handle)
        records.remove(record.id)
        log.info("instance removed", extra={"instance": record.id})
    for instance_id in await container.instance_ids():
        await container.destroy(Handle(id=instance_id, driver=container.name))
    for instance_id in await vm.instance_ids():
        await vm.destroy(Handle(id=instance_id, driver=vm.name))
    await network.teardown()
    log.info("node torn down", extra={"node": settings.name})


async def serve(
    settings: RikletSettings,
    controller: str,
    build_drivers: DriverFactory,
    host: str,
    port: int,
    images: ImageStore | None = None,
) -> None:
    async with RikClient(controller) as client:
        agent = Agent(settings, client, build_drivers, images)
        server = uvicorn.Server(
            uvicorn.Config(create_app(agent), host=host, port=port, log_config=None, access_log=False)
        )
        # uvicorn handles SIGTERM/SIGINT: the API stops, then the agent; instances keep running and a
        # restarted riklet adopts them.
        agent_task = asyncio.create_task(agent.run(), name="agent")
        server_task = asyncio.create_task(server.serve(), name="api")
        done, _ = await asyncio.wait({agent_task, server_task}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        agent_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await agent_task
        await server_task
        if agent_task in done and not agent_task.cancelled() and agent_task.exception() is not None:
            log.error("riklet stopped on an error", exc_info=agent_task.exception())
            raise SystemExit(1)
        log.info("riklet stopped; instances keep running")
