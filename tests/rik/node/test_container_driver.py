"""End-to-end tests of the container driver: real runc containers on a real bridge."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from rik.drivers.base import DriverError, Handle, InstanceRequest
from rik.drivers.container._cgroups import cgroup_dirs, controller_file
from rik.model import PortSpec, Resources, WorkloadSpec
from tests.support.http import http_get

from .conftest import INDEX_HTML, Node

pytestmark = pytest.mark.e2e


async def _progress(stage: str, message: str) -> None:
    pass


async def _start(node: Node, instance_id: str, spec: WorkloadSpec) -> Handle:
    handle = await node.driver.start(InstanceRequest(id=instance_id, workload="w", spec=spec), _progress)
    node.handles.append(handle)
    return handle


def _sh(command: str) -> str:
    return subprocess.run(command, shell=True, capture_output=True, text=True, check=False).stdout


def _alive(pid: int) -> bool:
    """True while the process runs; an exited one waiting for init to reap it (zombie) is not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def test_probe_finds_a_runtime(node: Node) -> None:
    assert await node.driver.probe() is None


async def test_httpd_answers_on_instance_address_and_host_port(node: Node, image_ref: str) -> None:
    handle = await _start(node, "web-1", WorkloadSpec(image=image_ref, ports=[PortSpec(port=80)]))

    assert handle.address is not None and handle.address.startswith("10.231.0.")
    (binding,) = handle.ports
    assert binding.port == 80 and binding.host_port is not None and 31000 <= binding.host_port <= 31999
    assert await http_get(f"http://{handle.address}:80/") == (200, INDEX_HTML)
    assert await http_get(f"http://127.0.0.1:{binding.host_port}/") == (200, INDEX_HTML)
    assert (await node.driver.inspect(handle)).running


async def test_fixed_host_port_and_args_keep_the_entrypoint(node: Node, image_ref: str) -> None:
    spec = WorkloadSpec(
        image=image_ref, args=["-p", "8081", "-h", "/www"], ports=[PortSpec(port=8081, host_port=31555)]
    )
    handle = await _start(node, "web-args", spec)

    assert handle.ports[0].host_port == 31555
    assert await http_get("http://127.0.0.1:31555/") == (200, INDEX_HTML)


async def test_command_and_env_are_merged_with_the_image(node: Node, image_ref: str) -> None:
    script = 'echo "$IMAGE_VAR $OVERRIDE $SPEC_VAR $(pwd) $(hostname)" > /tmp/env.txt && exec httpd -f -p 8080 -h /tmp'
    spec = WorkloadSpec(
        image=image_ref,
        command=["/bin/sh", "-c", script],
        env={"OVERRIDE": "spec", "SPEC_VAR": "x"},
        working_dir="/etc",
        ports=[PortSpec(port=8080)],
    )
    handle = await _start(node, "env-1", spec)

    status, body = await http_get(f"http://{handle.address}:8080/env.txt")
    assert (status, body) == (200, "from-image spec x /etc env-1\n")
    hosts = await http_get(f"http://127.0.0.1:{handle.ports[0].host_port}/env.txt")
    assert hosts == (200, body)


async def test_limits_are_applied_to_the_cgroup(node: Node, image_ref: str) -> None:
    spec = WorkloadSpec(image=image_ref, resources=Resources(cpu=250, memory=48))
    handle = await _start(node, "limits-1", spec)
    cgroups_path = handle.state["cgroups_path"]

    memory = controller_file(cgroups_path, "memory", "memory.limit_in_bytes")
    if not memory.exists():  # cgroup v2
        memory = controller_file(cgroups_path, "memory", "memory.max")
    assert int(memory.read_text()) == 48 * 1024 * 1024
    quota = controller_file(cgroups_path, "cpu", "cpu.cfs_quota_us")
    if quota.exists():
        assert int(quota.read_text()) == 25_000
    pids = controller_file(cgroups_path, "pids", "pids.max")
    assert pids.read_text().strip() == "1024"


async def test_destroy_leaves_nothing_behind(node: Node, image_ref: str) -> None:
    handle = await _start(node, "gone-1", WorkloadSpec(image=image_ref, ports=[PortSpec(port=80)]))
    state = handle.state
    pid, netns, directory = state["pid"], state["netns"], Path(state["directory"])
    attachment = await node.network.attachment("gone-1")
    assert attachment is not None
    assert _alive(pid)
    assert netns in _sh("ip netns list")
    assert cgroup_dirs(state["cgroups_path"])

    await node.driver.destroy(handle)
    await node.driver.destroy(handle)  # idempotent

    assert not _alive(pid)
    assert netns not in _sh("ip netns list")
    assert attachment.host_veth not in _sh("ip -o link")
    assert str(directory) not in Path("/proc/mounts").read_text()
    assert not directory.exists()
    assert cgroup_dirs(state["cgroups_path"]) == []
    nat = _sh("iptables-save -t nat")
    assert f"{handle.address}:80" not in nat and f"--dport {handle.ports[0].host_port}" not in nat
    assert "gone-1" not in await node.network.attachments()
    assert not (await node.driver.inspect(handle)).running


async def test_stop_sends_term_then_kill(node: Node, image_ref: str) -> None:
    # A shell that ignores SIGTERM: stop must fall back to SIGKILL after the grace period.
    spec = WorkloadSpec(image=image_ref, command=["/bin/sh", "-c", "trap '' TERM; while true; do sleep 1; done"])
    handle = await _start(node, "stubborn-1", spec)
    assert (await node.driver.inspect(handle)).running

    started = asyncio.get_running_loop().time()
    await node.driver.stop(handle, grace_seconds=0.5)
    elapsed = asyncio.get_running_loop().time() - started

    inspection = await node.driver.inspect(handle)
    assert not inspection.running and inspection.reason == "Exited"
    assert 0.4 < elapsed < 5


async def test_logs_capture_stdout_and_stderr(node: Node, image_ref: str) -> None:
    spec = WorkloadSpec(image=image_ref, command=["/bin/sh", "-c", "echo to-out; echo to-err >&2; exec sleep 60"])
    handle = await _start(node, "logs-1", spec)

    logs = await node.driver.logs(handle, None)
    assert b"to-out" in logs and b"to-err" in logs
    assert await node.driver.logs(handle, 7) == logs[-7:]


async def test_bad_image_reference_is_image_pull_failed(node: Node, tmp_path: Path) -> None:
    for reference in (
        f"oci:{tmp_path}/missing-layout:t",
        "127.0.0.1:1/nothing/here:1",  # nothing listens on port 1
        "Not A Reference",
    ):
        with pytest.raises(DriverError) as caught:
            await node.driver.start(
                InstanceRequest(id="bad-1", workload="w", spec=WorkloadSpec.model_construct(image=reference)),
                _progress,
            )
        assert caught.value.reason == "ImagePullFailed", reference
        assert caught.value.message
    assert await node.network.attachments() == []


async def test_command_that_exits_at_once_is_start_failed(node: Node, image_ref: str) -> None:
    spec = WorkloadSpec(image=image_ref, command=["/bin/sh", "-c", "echo it-broke >&2; exit 3"])
    with pytest.raises(DriverError) as caught:
        await node.driver.start(InstanceRequest(id="dies-1", workload="w", spec=spec), _progress)
    assert caught.value.reason == "StartFailed"
    assert "it-broke" in caught.value.message

    spec = WorkloadSpec(image=image_ref, command=["/no/such/binary"])
    with pytest.raises(DriverError) as caught:
        await node.driver.start(InstanceRequest(id="dies-2", workload="w", spec=spec), _progress)
    assert caught.value.reason == "StartFailed"
    assert "/no/such/binary" in caught.value.message

    # A failed start cleans up after itself.
    assert await node.network.attachments() == []
    assert "dies-" not in Path("/proc/mounts").read_text()


async def test_recover_adopts_a_running_container(node: Node, image_ref: str) -> None:
    handle = await _start(node, "adopt-1", WorkloadSpec(image=image_ref, ports=[PortSpec(port=80)]))
    persisted = dict(handle.state)

    fresh = node.new_driver()
    recovered = await fresh.recover(persisted)

    assert recovered is not None
    assert (recovered.id, recovered.address, recovered.ports) == (handle.id, handle.address, handle.ports)
    assert (await fresh.inspect(recovered)).running
    assert await http_get(f"http://127.0.0.1:{recovered.ports[0].host_port}/") == (200, INDEX_HTML)

    await fresh.destroy(recovered)
    assert await fresh.recover(persisted) is None
