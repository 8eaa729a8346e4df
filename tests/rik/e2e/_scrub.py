"""Remove everything a riklet left on this host, without the riklet (which may be dead or killed).

Run as ``python _scrub.py DATA_DIR BRIDGE SUBNET ADDRESS`` in the root namespace: the container and VM
drivers destroy every instance they can find a trace of (instance records, driver directories, network
attachments, containers in the runc root), any QEMU process still naming the riklet's VM directory is
killed and the VM driver's QMP socket directory removed, then the node network is torn down. For a riklet that ran
inside another network namespace, the bridge, veths and iptables chains there go away with that
namespace; what is global (processes, cgroups, /run/netns entries, files) is removed here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path

from rik.drivers.base import Handle
from rik.drivers.container import ContainerDriver
from rik.drivers.vm import VMDriver
from rik.images import ImageStore
from rik.network import NodeNetwork
from rik.riklet.records import RecordStore


def _runc_containers(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    proc = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=False)
    return proc.stdout.split() if proc.returncode == 0 else []


def _kill_stray_qemu(fragment: str) -> list[int]:
    """SIGKILL QEMU processes whose command line names `fragment` (the riklet's VM directory)."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and fragment.encode() in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(int(entry.name))
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in killed) and time.monotonic() < deadline:
        time.sleep(0.05)  # daemonized QEMU is reparented to init, which reaps it
    return killed


async def scrub(data_dir: Path, bridge: str, subnet: str, address: str) -> dict[str, list[str]]:
    network = NodeNetwork(bridge, IPv4Network(subnet), data_dir / "network", host_address=address)
    images = ImageStore(data_dir / "images")
    container = ContainerDriver(data_dir / "containers", network, images)
    vm_dir = data_dir / "vms"
    run_dir = Path("/run/rik-vm") / hashlib.sha256(str(vm_dir.resolve()).encode()).hexdigest()[:8]
    vm = VMDriver(vm_dir, network, images, run_dir=run_dir)
    records = RecordStore(data_dir / "instances")
    known = records.load_all()
    vm_ids = set(await vm.instance_ids()) | {i for i, r in known.items() if r.driver == "vm"}
    ids = set(known) | set(await container.instance_ids()) | set(await network.attachments()) | vm_ids
    ids |= set(_runc_containers(data_dir / "containers" / "runtime" / "runc"))
    for instance_id in sorted(ids):
        record = known.get(instance_id)
        # Both drivers are idempotent: an id unknown to one of them costs it a few no-ops.
        for driver in (vm, container):
            state = record.state if record is not None and record.driver == driver.name else {}
            await driver.destroy(Handle(id=instance_id, driver=driver.name, state=state))
        records.remove(instance_id)
    killed = _kill_stray_qemu(str(vm_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    await network.teardown()
    return {"destroyed": sorted(ids), "killed_qemu": [str(pid) for pid in killed]}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(scrub(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))))
