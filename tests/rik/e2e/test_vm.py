"""VMs through the real controller and riklet: boot from a registry image, serve like a Pod, snapshot and
restore clones, pause to zero CPU, survive a killed riklet, fail readably on bad input, boot raw disks.

Every VM boots under TCG here (about 5 s of CPU each on 2 cores), so each test boots as few as it can and
checks several things on what it booted. The guest kernel comes from the VM driver tests' cache
(`_cluster.GUEST_DIR`), so it is provisioned once per machine.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rik.model import Instance, Phase
from tests.support.http import http_get
from tests.support.images import build_busybox_cgi_image, parse_cgi_env, push_image

from ._cluster import Cluster, Riklet, cpu_ticks, in_subnet, pid_alive, qemu_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INDEX_HTML = "<h1>hello from a rik e2e vm</h1>\n"
HTTPD = ["/bin/busybox", "httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
#: Bounds, not sleeps: a TCG boot takes ~5 s alone, longer when two share the 2 CPUs.
BOOT_TIMEOUT = 90.0
VM_TOOLS = ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "e2fsck", "debugfs", "resize2fs", "nsenter")


def _require_vm_host() -> None:
    missing = [tool for tool in VM_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    if not Path("/dev/net/tun").exists():
        pytest.skip("/dev/net/tun is missing")


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout


@pytest.fixture(scope="module")
def vm_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout with `cgi` (busybox httpd on 8080 serving INDEX_HTML and /cgi-bin/env, GREETING set
    by the image) and `noentry` (the same files, no Entrypoint and no Cmd)."""
    _require_vm_host()
    layout = tmp_path_factory.mktemp("vm-images") / "layout"
    build_busybox_cgi_image(layout, "cgi", index_html=INDEX_HTML, env={"GREETING": "from-image"})
    _run("umoci", "config", "--image", f"{layout}:cgi", "--tag", "noentry", "--no-history",
         "--clear=config.entrypoint", "--clear=config.cmd")  # fmt: skip
    return layout


@pytest.fixture(scope="module")
def vm_image(vm_layout: Path, registry: str) -> str:
    return push_image(f"oci:{vm_layout}:cgi", registry, "e2e/vm-cgi:1")


@pytest.fixture(scope="module")
def noentry_image(vm_layout: Path, registry: str) -> str:
    pushed = push_image(f"oci:{vm_layout}:noentry", registry, "e2e/vm-noentry:1")
    config = json.loads(_run("skopeo", "inspect", "--config", "--tls-verify=false", f"docker://{pushed}"))
    assert not config["config"].get("Entrypoint") and not config["config"].get("Cmd"), config
    return pushed


@pytest.fixture(scope="module")
def raw_disks(vm_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cgi image's root file system as raw disks: `ext4`, `qcow2`, and `truncated` (an ext4 cut to a
    third of its size: its superblock is intact and names blocks past the end, as after a partial copy)."""
    work = tmp_path_factory.mktemp("raw-disks")
    _run("umoci", "unpack", "--image", f"{vm_layout}:cgi", str(work / "bundle"))
    ext4 = work / "disk.ext4"
    _run("mkfs.ext4", "-q", "-F", "-d", str(work / "bundle" / "rootfs"), str(ext4), "48M")
    qcow2 = work / "disk.qcow2"
    _run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(ext4), str(qcow2))
    truncated = work / "truncated.ext4"
    shutil.copyfile(ext4, truncated)
    os.truncate(truncated, ext4.stat().st_size // 3)
    shutil.rmtree(work / "bundle")
    return {"ext4": ext4, "qcow2": qcow2, "truncated": truncated}


def vm_manifest(name: str, image: str, *, replicas: int = 1, memory: int = 128, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rik/v1",
        "kind": "VM",
        "metadata": {"name": name, "labels": {"suite": "e2e"}},
        "spec": {
            "image": image,
            "ports": [{"port": 8080}],
            "replicas": replicas,
            "resources": {"cpu": 100, "memory": memory},
            **spec,
        },
    }


async def start_vm_node(cluster: Cluster, name: str = "n1", memory: int = 2048) -> Riklet:
    """Controller (if needed) and a riklet whose vm runtime works; fails with its log if it does not."""
    if cluster.controller is None:
        cluster.start_controller()
    riklet = cluster.start_riklet(name, memory=memory)
    nodes = await cluster.wait_nodes(
        lambda items: any(n.name == name and "vm" in n.runtimes for n in items), f"node {name} with the vm runtime"
    )
    assert nodes, cluster.logs()
    return riklet


async def apply(cluster: Cluster, manifest: dict[str, Any]) -> None:
    name = manifest["metadata"]["name"]
    applied = await cluster.rikctl("apply", "-f", str(cluster.write_manifest(name, manifest)))
    assert (applied.code, applied.stdout.strip()) == (0, f"workload/{name} created"), applied


def of(items: list[Instance], workload: str) -> list[Instance]:
    return sorted((i for i in items if i.workload == workload), key=lambda i: i.id)


async def running(cluster: Cluster, replicas: dict[str, int], timeout: float = BOOT_TIMEOUT) -> list[Instance]:
    """Wait until each workload of `replicas` has that many instances, all Running; fail early on a Failed one."""

    def check(items: list[Instance]) -> bool:
        failed = [i for i in items if i.workload in replicas and i.phase == Phase.FAILED]
        if failed:
            raise AssertionError(f"instance failed: {failed[0].reason}: {failed[0].message}\n{cluster.logs()}")
        return all([i.phase for i in of(items, w)] == [Phase.RUNNING] * count for w, count in replicas.items())

    found = await cluster.wait_instances(check, f"running instances {replicas}", timeout)
    return [i for i in found if i.workload in replicas]


async def serves(cluster: Cluster, instance: Instance, body: str = INDEX_HTML) -> None:
    """The instance answers `body` at its address and at its node's host port."""
    binding = instance.ports[0]
    assert instance.address is not None and binding.host_port is not None, instance
    for url in (f"http://{instance.address}:8080/", f"http://{instance.host_address}:{binding.host_port}/"):
        assert await http_get(url) == (200, body), f"{url} of {instance.id}\n{cluster.logs()}"


async def cgi_env(instance: Instance) -> dict[str, str]:
    status, body = await http_get(f"http://{instance.address}:8080/cgi-bin/env")
    assert status == 200, body
    return parse_cgi_env(body)


async def answers_within(url: str, seconds: float) -> bool:
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=seconds) as client:
            await client.get(url)
    except httpx.TransportError:
        return False
    return True


# 1 + 2 ----------------------------------------------------------------------------------------------


async def test_vm_serves_like_a_pod_and_delete_leaves_nothing(cluster: Cluster, vm_image: str) -> None:
    node = await start_vm_node(cluster)
    env = {"GREETING": "from-spec"}
    await apply(cluster, vm_manifest("vmweb", vm_image, env=env))
    pod = vm_manifest("podweb", vm_image, env=env)
    pod["kind"] = "Pod"
    await apply(cluster, pod)
    instances = await running(cluster, {"vmweb": 1, "podweb": 1})
    [vm] = of(instances, "vmweb")
    [container] = of(instances, "podweb")
    assert vm.node == "n1" and in_subnet(vm.address, node.subnet) and vm.host_address == node.address, vm

    # Same image, same answers: the page, and the spec's env (over the image's) with the instance's hostname.
    await serves(cluster, vm)
    await serves(cluster, container)
    assert await cgi_env(vm) == {"GREETING": "from-spec", "HOSTNAME": vm.id}
    assert await cgi_env(container) == {"GREETING": "from-spec", "HOSTNAME": container.id}
    logs = await cluster.rikctl("logs", vm.id)
    assert logs.code == 0 and "RIK-ENTRYPOINT-START" in logs.stdout, logs

    pid = node.qemu_pid(vm.id)
    assert pid is not None, f"no qemu process for {vm.id}\n{cluster.logs()}"
    before = await cluster.vm_footprint(node, vm.id, pid)
    assert all(before.values()), f"expected on the host while the VM runs: {before}"

    deleted = await cluster.rikctl("delete", "workload", "vmweb", "--wait", "--timeout", "30")
    assert (deleted.code, deleted.stdout.strip()) == (0, "workload/vmweb deleted"), deleted
    after = await cluster.vm_footprint(node, vm.id, pid)
    left = [what for what, present in after.items() if present]
    assert not left, f"left on the host after delete --wait: {left}\n{cluster.logs()}"
    assert qemu_processes(str(node.vm_dir)) == {}
    await serves(cluster, container)  # the Pod was not disturbed


# 3 --------------------------------------------------------------------------------------------------


async def test_snapshot_restores_three_clones_and_pause_stops_the_cpu(cluster: Cluster, vm_image: str) -> None:
    node = await start_vm_node(cluster)
    await apply(cluster, vm_manifest("src", vm_image))
    [source] = await running(cluster, {"src": 1})
    await serves(cluster, source)

    snapshot = await cluster.rikctl("snapshot", "create", source.id, "snap1", "--timeout", "90")
    assert (snapshot.code, snapshot.stdout.strip()) == (0, "snapshot/snap1 ready on node n1"), snapshot
    await serves(cluster, source)  # the source keeps running

    started = time.monotonic()
    await apply(cluster, vm_manifest("clones", vm_image, replicas=3, vm={"snapshot": "snap1"}))
    clones = of(await running(cluster, {"clones": 3}, timeout=60), "clones")
    restore_seconds = time.monotonic() - started
    log = node.proc.log_path.read_text()
    assert log.count('"vm restored"') == 3 and log.count('"vm started"') == 1, node.proc.tail(60)
    # Three boots would take 15 s of CPU on 2 cores; three restores, a few seconds.
    assert restore_seconds < 20, f"three restores took {restore_seconds:.1f}s\n{cluster.logs()}"
    assert len({c.address for c in clones} | {source.address}) == 4, clones
    assert len({c.ports[0].host_port for c in clones} | {source.ports[0].host_port}) == 4, clones
    for clone in clones:
        await serves(cluster, clone)
        # The guest is the snapshot's: same memory, hence the source's hostname.
        assert (await cgi_env(clone))["HOSTNAME"] == source.id
    pids = {c.id: node.qemu_pid(c.id) for c in clones}
    assert None not in pids.values() and len(set(pids.values())) == 3, pids

    target = clones[0]
    paused = await cluster.rikctl("pause", target.id)
    assert paused.code == 0, paused
    await cluster.wait_instances(
        lambda items: any(i.id == target.id and i.phase == Phase.PAUSED for i in items), f"{target.id} Paused"
    )
    pid = pids[target.id]
    assert pid is not None
    before = cpu_ticks(pid)
    await asyncio.sleep(1.0)  # the measurement window, not a wait for a state
    used = cpu_ticks(pid) - before
    assert used <= 3, f"a paused VM used {used} ticks in 1 s"
    url = f"http://{target.address}:8080/"
    assert not await answers_within(url, 1.0), f"{url} answered while paused"
    shown = await cluster.rikctl("get", "instances", "--workload", "clones", "-o", "json")
    phases = {i["id"]: i["phase"] for i in json.loads(shown.stdout)}
    assert phases == {c.id: "Paused" if c.id == target.id else "Running" for c in clones}, shown

    resumed = await cluster.rikctl("resume", target.id)
    assert resumed.code == 0, resumed
    await cluster.wait_instances(
        lambda items: any(i.id == target.id and i.phase == Phase.RUNNING for i in items), f"{target.id} resumed"
    )
    await serves(cluster, target)
    assert node.qemu_pid(target.id) == pid


# 4 --------------------------------------------------------------------------------------------------


async def test_a_killed_riklet_adopts_its_vms(cluster: Cluster, vm_image: str) -> None:
    node = await start_vm_node(cluster)
    await apply(cluster, vm_manifest("pair", vm_image, replicas=2))
    vms = await running(cluster, {"pair": 2})
    pids = {vm.id: node.qemu_pid(vm.id) for vm in vms}
    assert None not in pids.values(), pids

    node.proc.kill(signal.SIGKILL)
    for vm in vms:  # QEMU is daemonized: it outlives the riklet and keeps serving
        await serves(cluster, vm)

    cluster.start_riklet("n1")
    restarted = node.proc.log_path.read_text().rpartition("===== ")[2]
    assert restarted.count("adopted running instance") == 2, node.proc.tail(60)
    async with cluster.client() as client, httpx.AsyncClient(trust_env=False) as http:
        after = (await client.list_instances()).items
        runners = (await http.get(f"{node.url}/v1/instances")).json()
    assert sorted((i.id, i.phase) for i in after) == sorted((vm.id, Phase.RUNNING) for vm in vms), cluster.logs()
    assert sorted((r["id"], r["phase"]) for r in runners) == sorted((vm.id, "Running") for vm in vms), runners
    # Same QEMU processes, no second one started, none orphaned.
    assert {vm.id: node.qemu_pid(vm.id) for vm in vms} == pids
    assert set(qemu_processes(str(node.vm_dir))) == set(pids.values())
    for vm in vms:
        await serves(cluster, vm)
    # After a few monitor rounds (1 s each) they are still Running, with the same processes.
    await asyncio.sleep(2.5)
    async with cluster.client() as client:
        assert {i.id: i.phase for i in (await client.list_instances()).items} == dict.fromkeys(pids, Phase.RUNNING)
    assert set(qemu_processes(str(node.vm_dir))) == set(pids.values())
    assert all(pid is not None and pid_alive(pid) for pid in pids.values())


# 5 --------------------------------------------------------------------------------------------------


async def test_bad_vm_input_fails_readably_while_the_node_keeps_serving(
    cluster: Cluster, vm_image: str, noentry_image: str, raw_disks: dict[str, Path], registry: str
) -> None:
    await start_vm_node(cluster, memory=2048)
    await apply(cluster, vm_manifest("healthy", vm_image))
    [healthy] = await running(cluster, {"healthy": 1})
    node = cluster.riklets["n1"]
    healthy_pid = node.qemu_pid(healthy.id)

    bad = {
        "missing": vm_manifest("missing", f"{registry}/e2e/does-not-exist:1"),
        "noentry": vm_manifest("noentry", noentry_image),
        "huge": vm_manifest("huge", vm_image, memory=100_000),
        "nokernel": vm_manifest("nokernel", vm_image, vm={"kernel": "/nonexistent"}),
        "corrupt": vm_manifest("corrupt", f"file://{raw_disks['truncated']}", command=HTTPD),
    }
    for manifest in bad.values():
        await apply(cluster, manifest)

    answered: list[tuple[bool, float]] = []

    def settled(items: list[Instance]) -> bool:
        return all(
            of(items, name) and all(i.phase == Phase.FAILED for i in of(items, name))
            for name in ("missing", "noentry", "nokernel", "corrupt")
        ) and any(i.workload == "huge" and i.reason == "Unschedulable" for i in items)

    async def ask() -> None:
        began = time.monotonic()
        ok = await answers_within(f"http://{healthy.address}:8080/", 5.0)
        answered.append((ok, round(time.monotonic() - began, 2)))

    async def keep_asking() -> None:  # the healthy VM answers all along
        while True:
            await ask()
            await asyncio.sleep(0.2)

    prober = asyncio.create_task(keep_asking())
    try:
        items = await cluster.wait_instances(settled, "every bad instance Failed or Unschedulable", 60)
    finally:
        prober.cancel()
    await ask()
    print(f"probes of the healthy VM while the bad ones failed: {answered}")
    assert all(ok for ok, _ in answered), f"the healthy VM stopped answering: {answered}\n{cluster.logs()}"

    def only(name: str) -> Instance:
        [instance] = of(items, name)
        return instance

    expected = {
        "missing": ("ImagePullFailed", ["does-not-exist"]),
        "noentry": ("NoCommand", ["entrypoint"]),
        "nokernel": ("QemuFailed", ["/nonexistent"]),
        "corrupt": ("DiskCorrupt", ["truncated.ext4", "e2fsck found a damaged ext4 file system"]),
    }
    for name, (reason, fragments) in expected.items():
        instance = only(name)
        assert instance.reason == reason, instance
        for fragment in fragments:
            assert fragment in instance.message, (name, instance.message)
        assert "Traceback" not in instance.message
    huge = only("huge")
    assert (huge.phase, huge.node) == (Phase.PENDING, None), huge
    for fragment in ("0/1 nodes can run it", "insufficient memory", "100000 MiB"):
        assert fragment in huge.message, huge.message

    # Failed starts left nothing running; the healthy VM is the same process and still serves.
    assert set(qemu_processes(str(node.vm_dir))) == {healthy_pid}
    await serves(cluster, healthy)
    async with cluster.client() as client:
        assert (await client.get_instance(healthy.id)).phase == Phase.RUNNING


# The raw-disk form of an image -------------------------------------------------------------------------


@pytest.fixture
def disk_server(raw_disks: dict[str, Path]) -> Iterator[str]:
    """Serves the raw disks' directory over HTTP on 127.0.0.1; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(raw_disks["ext4"].parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


async def test_raw_disks_boot_from_a_file_and_a_url(
    cluster: Cluster, raw_disks: dict[str, Path], disk_server: str
) -> None:
    node = await start_vm_node(cluster)
    env = {"GREETING": "from-a-raw-disk"}
    await apply(cluster, vm_manifest("fromfile", f"file://{raw_disks['qcow2']}", command=HTTPD, env=env))
    await apply(cluster, vm_manifest("fromurl", f"{disk_server}/disk.ext4", command=HTTPD, env=env))
    instances = await running(cluster, {"fromfile": 1, "fromurl": 1})
    for instance in instances:
        await serves(cluster, instance)
        assert await cgi_env(instance) == {"GREETING": "from-a-raw-disk", "HOSTNAME": instance.id}
    cached = sorted(p.name for p in (node.vm_dir / "disks").glob("raw-*.ext4"))
    assert len(cached) == 2, cached
    # The user's disks are untouched (RIK's init went into its own copies).
    untouched = await asyncio.to_thread(_run, "debugfs", "-R", "stat /.rik", str(raw_disks["ext4"]))
    assert "Inode:" not in untouched, untouched

    # A raw disk has no image config: without spec.command it fails, saying so.
    await apply(cluster, vm_manifest("nocommand", f"file://{raw_disks['ext4']}"))
    items = await cluster.wait_instances(
        lambda items: [i.phase for i in of(items, "nocommand")] == [Phase.FAILED], "nocommand Failed"
    )
    [failed] = of(items, "nocommand")
    assert failed.reason == "NoCommand" and "spec.command" in failed.message, failed
