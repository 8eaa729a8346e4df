"""End-to-end tests of the VM driver: real QEMU microvms (TCG here) on a real bridge.

Boots cost 3-5 CPU-seconds each under TCG, so each test boots at most once and checks several things.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from rik.drivers.base import DriverError, Handle, InstanceRequest
from rik.drivers.vm._link import GUEST_ADDRESS
from rik.drivers.vm._process import cpu_ticks
from rik.drivers.vm._qemu import MachineConfig, kernel_cmdline
from rik.model import PortSpec, Resources, WorkloadSpec
from tests.support.http import http_get
from tests.support.images import parse_cgi_env

from .conftest import INDEX_HTML, VMNode, no_progress

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def _output(*argv: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, argv
    return out


def _web(image: str, **kwargs: object) -> WorkloadSpec:
    return WorkloadSpec.model_validate({"image": image, "ports": [PortSpec(port=8080)], **kwargs})


async def test_boots_serves_env_stops_and_cleans_up(no_leftovers: None, vm_node: VMNode, cgi_image: str) -> None:
    started = time.monotonic()
    handle = await vm_node.start("vm-web", _web(cgi_image, env={"GREETING": "from-spec"}))
    boot_seconds = time.monotonic() - started
    print(f"boot to serving: {boot_seconds:.2f} s")

    assert handle.address is not None and handle.address.startswith("10.233.0.")
    (binding,) = handle.ports
    assert binding.host_port is not None and 32100 <= binding.host_port <= 32199
    assert await http_get(f"http://{handle.address}:8080/") == (200, INDEX_HTML)
    assert await http_get(f"http://127.0.0.1:{binding.host_port}/") == (200, INDEX_HTML)
    status, body = await http_get(f"http://{handle.address}:8080/cgi-bin/env")
    assert status == 200 and parse_cgi_env(body) == {"GREETING": "from-spec", "HOSTNAME": "vm-web"}
    assert (await vm_node.driver.inspect(handle)).running
    assert b"RIK-ENTRYPOINT-START" in await vm_node.driver.logs(handle, None)

    await vm_node.driver.stop(handle, 10.0)  # the ACPI power button: SIGTERM to httpd, then power off
    inspection = await vm_node.driver.inspect(handle)
    assert not inspection.running and inspection.exit_code == 143

    directory = Path(handle.state["directory"])
    socket = Path(handle.state["qmp_socket"])
    await vm_node.driver.destroy(handle)
    await vm_node.driver.destroy(handle)  # idempotent
    await vm_node.driver.destroy(Handle(id="never-started", driver="vm"))  # safe from an empty state
    assert not directory.exists() and not socket.exists()
    assert await vm_node.network.attachments() == []


async def test_pause_snapshot_clones_and_recover(no_leftovers: None, vm_node: VMNode, cgi_image: str) -> None:
    source = await vm_node.start("vm-src", _web(cgi_image))
    pid = source.state["pid"]

    await vm_node.driver.pause(source)
    assert (await vm_node.driver.inspect(source)).reason == "Paused"
    before = cpu_ticks(pid)
    await asyncio.sleep(1.0)
    assert cpu_ticks(pid) - before <= 2  # clock ticks (1/100 s): a paused VM uses ~0 CPU
    started = time.monotonic()
    await vm_node.driver.resume(source)
    assert await http_get(f"http://{source.address}:8080/") == (200, INDEX_HTML)
    print(f"resume to answer: {time.monotonic() - started:.3f} s")

    snapshot = vm_node.root / "snapshots" / "s1"
    started = time.monotonic()
    await vm_node.driver.snapshot(source, snapshot)
    print(f"snapshot: {time.monotonic() - started:.2f} s")
    assert await http_get(f"http://{source.address}:8080/") == (200, INDEX_HTML)  # the source keeps running

    async def clone(index: int) -> Handle:
        request = InstanceRequest(id=f"vm-clone-{index}", workload="w", spec=_web(cgi_image))
        began = time.monotonic()
        handle = await vm_node.driver.restore(request, snapshot, no_progress)
        print(f"restore to serving ({index}): {time.monotonic() - began:.2f} s")
        vm_node.handles.append(handle)
        return handle

    clones = await asyncio.gather(*(clone(i) for i in range(3)))
    addresses = {c.address for c in clones} | {source.address}
    assert len(addresses) == 4
    # Each clone writes to its own overlay (copies of one empty overlay made once per snapshot).
    overlays = [Path(c.state["directory"]) / "overlay.qcow2" for c in clones]
    assert len({(o.stat().st_dev, o.stat().st_ino) for o in overlays}) == 3
    assert all(o.stat().st_nlink == 1 for o in overlays)
    assert len(list(snapshot.glob("clone-*.qcow2"))) == 1
    for handle in clones:  # QEMU made the tap; the guest's neighbour entry is set, not learned
        neighbours = (await _output("ip", "-n", handle.state["netns"], "neigh", "show", GUEST_ADDRESS)).decode()
        assert "PERMANENT" in neighbours and "tap0" in neighbours, neighbours
    for handle in clones:
        assert await http_get(f"http://{handle.address}:8080/") == (200, INDEX_HTML)
        assert await http_get(f"http://127.0.0.1:{handle.ports[0].host_port}/") == (200, INDEX_HTML)
        status, body = await http_get(f"http://{handle.address}:8080/cgi-bin/env")
        assert status == 200 and parse_cgi_env(body)["HOSTNAME"] == "vm-src"  # the guest is the snapshot's

    # A new driver object (a restarted riklet) adopts a running VM from its persisted state.
    recovered = await vm_node.new_driver().recover(dict(clones[0].state))
    assert recovered is not None and recovered.address == clones[0].address
    assert (await vm_node.new_driver().inspect(recovered)).running
    await vm_node.new_driver().destroy(recovered)
    assert await vm_node.new_driver().recover(dict(clones[0].state)) is None
    assert await http_get(f"http://{clones[1].address}:8080/") == (200, INDEX_HTML)


async def test_start_failures_are_clear(no_leftovers: None, vm_node: VMNode, cgi_image: str, empty_image: str) -> None:
    with pytest.raises(DriverError) as missing:
        await vm_node.start("vm-missing", WorkloadSpec(image="oci:/nonexistent/layout:nope"))
    assert missing.value.reason == "ImagePullFailed"

    with pytest.raises(DriverError) as no_command:
        await vm_node.start("vm-empty", WorkloadSpec(image=empty_image))
    assert no_command.value.reason == "NoCommand" and "command" in no_command.value.message

    with pytest.raises(DriverError) as too_big:
        await vm_node.start("vm-huge", _web(cgi_image, resources=Resources(memory=4_194_304)))
    assert too_big.value.reason == "QemuFailed" and "memory" in too_big.value.message
    assert await vm_node.network.attachments() == []
    assert not any((vm_node.root / "driver" / "instances").iterdir())


async def test_restore_of_a_corrupt_snapshot_fails_readably_and_leaves_nothing(
    no_leftovers: None, vm_node: VMNode, cgi_image: str
) -> None:
    """QEMU loads the memory as it starts (`-incoming fd:N`) while the network is set up: when the stream
    is garbage it exits, and the restore says so and removes the namespace, the files and the address."""
    kernel = await vm_node.assets.ensure()
    snapshot = vm_node.root / "snapshots" / "corrupt"
    snapshot.mkdir(parents=True)
    (snapshot / "base.ext4").write_bytes(bytes(1 << 20))
    await _output(
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.ext4", "-F", "raw", str(snapshot / "disk.qcow2")
    )
    (snapshot / "config.img").write_bytes(bytes(512))
    (snapshot / "vmlinuz").symlink_to(kernel.kernel)
    (snapshot / "initramfs").symlink_to(kernel.initramfs)
    (snapshot / "state").write_bytes(b"not a migration stream" * 1000)
    machine = MachineConfig(128, 1, "tcg", "vmlinuz", "initramfs", kernel_cmdline([]))
    (snapshot / "snapshot.json").write_text(json.dumps({"version": 1, "machine": machine.to_json()}))

    request = InstanceRequest(id="vm-corrupt", workload="w", spec=_web(cgi_image))
    with pytest.raises(DriverError) as failed:
        await vm_node.driver.restore(request, snapshot, no_progress)
    assert failed.value.reason == "RestoreFailed", failed.value.message
    assert "snapshot" in failed.value.message
    assert await vm_node.network.attachments() == []
    assert not any((vm_node.root / "driver" / "instances").iterdir())
