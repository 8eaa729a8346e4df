"""VM start-to-serving through RIK (boot, snapshot restore, resume), against raw QEMU in the same run.

Image: Debian bookworm minbase + python3, a `ThreadingHTTPServer` on :8080 (no reverse lookup at start),
built once with mmdebstrap and cached under /var/cache/rik-bench (see bench/_python_image.py), pushed to a
registry started for the run.

RIK: a real controller and riklet (bridge rikvmbench0, subnet 10.231.7.0/24), the node's shared guest
kernel (/var/lib/rik/guest). Every time runs from the API call to the first HTTP 200 at the address the
riklet reports:
  boot     a 1-replica VM workload (the image cache is warm: one untimed warm-up boot first);
  restore  a 1-replica workload with `spec.vm.snapshot` (the snapshot is taken once, via the API);
  resume   `resume_instance` of an instance paused via the API (phase Paused seen first);
  clones   one workload of N replicas restored from the snapshot at once: until all N serve.
Memory is the qemu process's private memory (Private_Clean + Private_Dirty of smaps_rollup).

Reference, interleaved run by run with RIK's: `qemu-system-x86_64` launched with a plain subprocess and
the same machine (the driver's guest kernel + initramfs and kernel command line, the same ext4 root disk
built by the driver's DiskCache under a qcow2 overlay, the driver's config disk), user networking with a
host port forward. Restore: QMP `stop` + `migrate` to a file, then `-incoming defer` + `migrate-incoming`
+ `cont`. Resume: QMP `stop` of a restored raw VM, then `cont` → first 200. The overlay (qemu-img create) is
made before the reference clock starts.

    uv run python -m bench.vm_start [--runs 5] [--clones 5] [--boot-runs N]

`--boot-runs` (default: --runs) sets the boot runs apart, for working on restores: one boot is enough to
take the snapshot from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from qemu.qmp import QMPClient
from tests.support.registry import start_registry, stop_registry

from bench._harness import controller, free_port, report, wait_http
from bench._python_image import BODY, PORT, python_http_image
from rik.client import ApiError, RikClient
from rik.drivers.process import process_args, process_env
from rik.drivers.vm import GuestAssets
from rik.drivers.vm._accel import probe_accel
from rik.drivers.vm._config_disk import GuestConfig, config_disk
from rik.drivers.vm._disks import DiskCache
from rik.drivers.vm._link import GUEST_ADDRESS, GUEST_MAC, HOST_ADDRESS, PREFIXLEN
from rik.drivers.vm._qemu import kernel_cmdline
from rik.images import ImageStore
from rik.model import WorkloadSpec
from rik.riklet.records import RecordStore

BRIDGE = "rikvmbench0"
SUBNET = "10.231.7.0/24"
GUEST_DIR = Path("/var/lib/rik/guest")
MEMORY_MIB = 128
SNAPSHOT = "vmbench-snap"
QEMU = "qemu-system-x86_64"


# Probing -------------------------------------------------------------------------------------------------


async def first_ok(http: httpx.AsyncClient, url: str, deadline: float) -> float:
    """perf_counter() of the first 200 carrying the server's body. Both sides share one client made up
    front (making one costs tens of ms, which would count against whichever side made it late)."""
    while time.perf_counter() < deadline:
        try:
            response = await http.get(url)
            if response.status_code == 200 and response.text == BODY:
                return time.perf_counter()
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.005)
    raise TimeoutError(url)


def private_mib(pid: int) -> float:
    kib = 0
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            name, _, rest = line.partition(":")
            if name in ("Private_Clean", "Private_Dirty"):
                kib += int(rest.split()[0])
    return kib / 1024


# RIK -----------------------------------------------------------------------------------------------------


@dataclass
class Rik:
    url: str
    image: str
    data_dir: Path
    client: RikClient
    http: httpx.AsyncClient | None = None
    trace: bool = False

    def manifest(self, name: str, replicas: int = 1, snapshot: str | None = None) -> dict[str, Any]:
        vm: dict[str, Any] = {"snapshot": snapshot} if snapshot else {}
        return {
            "kind": "VM",
            "metadata": {"name": name},
            "spec": {
                "image": self.image,
                "replicas": replicas,
                "ports": [{"port": PORT}],
                "resources": {"cpu": 100, "memory": MEMORY_MIB},
                "vm": vm,
            },
        }

    async def start(self, name: str, replicas: int = 1, snapshot: str | None = None) -> list[tuple[str, float]]:
        """Create the workload; (instance id, seconds from the API call to its first 200) per replica."""
        since = (await self.client.list_instances()).resource_version
        started, wall = time.perf_counter(), time.time()
        await self.client.create_workload(self.manifest(name, replicas, snapshot))
        deadline = started + 180
        probes: dict[str, asyncio.Task[float]] = {}
        async for event in self.client.watch(since=since, resources="instances", workload=name):
            obj = event.object
            if self.trace:
                at = (time.perf_counter() - started) * 1000
                print(f"  {at:7.1f} ms  {obj['id']} {obj['phase']} {obj['reason']}", file=sys.stderr)
            if obj["phase"] == "Running" and obj["id"] not in probes:
                url = f"http://{obj['address']}:{PORT}/"
                assert self.http is not None
                probes[obj["id"]] = asyncio.create_task(first_ok(self.http, url, deadline))
            if obj["phase"] == "Failed":
                raise RuntimeError(f"instance failed: {obj['reason']}: {obj['message']}")
            if len(probes) == replicas:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"workload {name} not running")
        served = await asyncio.gather(*probes.values())
        if self.trace:
            clock = time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1e6):06d}"
            for instance_id, t in zip(probes, served, strict=True):
                print(
                    f"  {(t - started) * 1000:7.1f} ms  {instance_id} serving (API call at {clock} UTC)",
                    file=sys.stderr,
                )
        return [(instance_id, t - started) for instance_id, t in zip(probes, served, strict=True)]

    def pid(self, instance_id: str) -> int:
        return int(RecordStore(self.data_dir / "instances").load_all()[instance_id].state["pid"])

    async def delete(self, name: str) -> None:
        """Delete the workload and wait until the riklet has removed every instance."""
        with contextlib.suppress(ApiError):
            await self.client.delete_workload(name)
        deadline = time.monotonic() + 120
        while (await self.client.list_instances(workload=name)).items:
            if time.monotonic() > deadline:
                raise TimeoutError(f"instances of {name} not removed")
            await asyncio.sleep(0.1)

    async def wait_phase(self, instance_id: str, phase: str) -> None:
        deadline = time.monotonic() + 60
        while (await self.client.get_instance(instance_id)).phase != phase:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{instance_id} not {phase}")
            await asyncio.sleep(0.01)

    async def snapshot(self, instance_id: str) -> float:
        started = time.perf_counter()
        await self.client.snapshot_instance(instance_id, SNAPSHOT)
        while (snapshot := await self.client.get_snapshot(SNAPSHOT)).phase != "Ready":
            if snapshot.phase == "Failed":
                raise RuntimeError(f"snapshot failed: {snapshot.reason}: {snapshot.message}")
            await asyncio.sleep(0.02)
        return time.perf_counter() - started

    async def resume(self, instance_id: str, address: str) -> float:
        await self.client.pause_instance(instance_id)
        await self.wait_phase(instance_id, "Paused")
        started = time.perf_counter()
        await self.client.resume_instance(instance_id)
        assert self.http is not None
        return await first_ok(self.http, f"http://{address}:{PORT}/", started + 30) - started

    async def delete_snapshot(self) -> None:
        with contextlib.suppress(ApiError):
            await self.client.delete_snapshot(SNAPSHOT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await self.client.get_snapshot(SNAPSHOT)
            except ApiError:
                return
            await asyncio.sleep(0.1)


# Raw QEMU ------------------------------------------------------------------------------------------------


@dataclass
class RawMachine:
    """The same machine as the driver's: its kernel, initramfs, kernel command line, root disk, config disk."""

    workdir: Path
    kernel: Path
    initramfs: Path
    cmdline: str
    base: Path
    config: Path
    accel: str
    http: httpx.AsyncClient | None = None
    pids: list[int] = field(default_factory=list)
    count: int = 0
    ports: dict[int, tuple[Path, int]] = field(default_factory=dict)  # pid → (directory, forwarded port)

    def argv(self, directory: Path, port: int, *, incoming: bool) -> list[str]:
        accel = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg,tb-size=32"]
        argv = [
            QEMU, "-name", f"rawbench-{directory.name}", "-M", "microvm", *accel,
            "-m", str(MEMORY_MIB), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(self.kernel), "-initrd", str(self.initramfs), "-append", self.cmdline,
            "-chardev", f"file,id=console,path={directory / 'console.log'},append=on", "-serial", "chardev:console",
            "-qmp", f"unix:{directory / 'qmp.sock'},server=on,wait=off",
            "-drive", f"id=root,file={directory / 'overlay.qcow2'},format=qcow2,if=none,discard=unmap",
            "-device", "virtio-blk-device,drive=root",
            "-drive", f"id=config,file={self.config},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=config",
            "-netdev", f"user,id=net0,net=172.30.0.0/24,host={HOST_ADDRESS},"
            f"hostfwd=tcp:127.0.0.1:{port}-{GUEST_ADDRESS}:{PORT}",
            "-device", f"virtio-net-device,netdev=net0,mac={GUEST_MAC}",
            "-daemonize", "-pidfile", str(directory / "qemu.pid"),
        ]  # fmt: skip
        return [*argv, "-incoming", "defer"] if incoming else argv

    def prepare(self, backing: Path, backing_format: str) -> Path:
        self.count += 1
        directory = self.workdir / f"raw-{self.count}"
        directory.mkdir()
        overlay = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", backing_format]
        subprocess.run([*overlay, str(directory / "overlay.qcow2")], check=True)
        return directory

    def launch(self, directory: Path, port: int, *, incoming: bool = False) -> int:
        with (directory / "qemu.log").open("wb") as log:
            subprocess.run(
                self.argv(directory, port, incoming=incoming), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                check=True,
            )  # fmt: skip
        pid = int((directory / "qemu.pid").read_text())
        self.pids.append(pid)
        return pid

    async def boot(self) -> tuple[float, float, Path, int]:
        """(seconds to the first 200, private MiB, instance directory, pid)."""
        directory = self.prepare(self.base, "raw")
        port = free_port()
        started = time.perf_counter()
        pid = self.launch(directory, port)
        assert self.http is not None
        served = await first_ok(self.http, f"http://127.0.0.1:{port}/", started + 120)
        return served - started, private_mib(pid), directory, pid

    async def snapshot(self, directory: Path, pid: int, target: Path) -> float:
        target.mkdir()
        started = time.perf_counter()
        client = QMPClient("rawbench")
        await client.connect(str(directory / "qmp.sock"))
        try:
            await client.execute("stop")
            await client.execute("migrate", {"uri": f"exec:cat > {target / 'state'}"})
            while (state := await qmp_field(client, "query-migrate")) != "completed":
                if state in ("failed", "cancelled"):
                    raise RuntimeError(f"raw migrate: {state}")
                await asyncio.sleep(0.01)
            shutil.copyfile(directory / "overlay.qcow2", target / "disk.qcow2")
            took = time.perf_counter() - started
        finally:
            await client.disconnect()
        self.kill(pid)
        return took

    async def restore(self, snapshot: Path) -> tuple[float, float, int]:
        directory = self.prepare(snapshot / "disk.qcow2", "qcow2")
        port = free_port()
        started = time.perf_counter()
        pid = self.launch(directory, port, incoming=True)
        client = QMPClient("rawbench")
        await client.connect(str(directory / "qmp.sock"))
        try:
            await client.execute("migrate-incoming", {"uri": f"exec:cat {snapshot / 'state'}"})
            while (status := await qmp_field(client, "query-status")) == "inmigrate":
                await asyncio.sleep(0.005)
            if status != "running":
                await client.execute("cont")
        finally:
            await client.disconnect()
        assert self.http is not None
        served = await first_ok(self.http, f"http://127.0.0.1:{port}/", started + 60)
        self.ports[pid] = (directory, port)
        return served - started, private_mib(pid), pid

    async def resume(self, pid: int) -> float:
        """Pause a serving VM (QMP `stop`), then the seconds from `cont` to the first 200."""
        directory, port = self.ports[pid]
        client = QMPClient("rawbench")
        await client.connect(str(directory / "qmp.sock"))
        try:
            await client.execute("stop")
            started = time.perf_counter()
            await client.execute("cont")
            assert self.http is not None
            served = await first_ok(self.http, f"http://127.0.0.1:{port}/", started + 30)
        finally:
            await client.disconnect()
        return served - started

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)

    def kill_all(self) -> None:
        for pid in self.pids:
            self.kill(pid)


async def qmp_field(client: QMPClient, command: str) -> str:
    """The `status` field of a query command's answer."""
    answer = await client.execute(command)
    return str(answer.get("status")) if isinstance(answer, dict) else ""


async def raw_machine(oci_ref: str, workdir: Path) -> RawMachine:
    """The driver's building blocks, used to make identical inputs for raw QEMU."""
    kernel = await GuestAssets(GUEST_DIR).ensure()
    accel = await probe_accel(kernel, GUEST_DIR / "accel.json")
    image = await ImageStore(workdir / "raw-images").pull(oci_ref)
    disks = DiskCache(workdir / "raw-disks", cap_mib=8192, in_use=set)
    base = await disks.disk_for(image, None)
    spec = WorkloadSpec.model_validate({"image": oci_ref, "ports": [{"port": PORT}]})
    hostname = "rawbench"
    guest = GuestConfig(
        hostname=hostname,
        argv=process_args(spec, image.config),
        env=process_env(spec, image.config, hostname),
        working_dir=spec.working_dir or image.config.working_dir or "/",
        address=GUEST_ADDRESS,
        prefixlen=PREFIXLEN,
        gateway=HOST_ADDRESS,
    )
    config = workdir / "raw-config.img"
    config.write_bytes(config_disk(guest))
    return RawMachine(workdir, kernel.kernel, kernel.initramfs, kernel_cmdline([]), base, config, accel)


# The run -------------------------------------------------------------------------------------------------


@dataclass
class Figures:
    accel: str = ""
    rik_boot: list[float] = field(default_factory=list)
    raw_boot: list[float] = field(default_factory=list)
    rik_restore: list[float] = field(default_factory=list)
    raw_restore: list[float] = field(default_factory=list)
    rik_resume: list[float] = field(default_factory=list)
    raw_resume: list[float] = field(default_factory=list)
    rik_boot_mib: list[float] = field(default_factory=list)
    raw_boot_mib: list[float] = field(default_factory=list)
    rik_restore_mib: list[float] = field(default_factory=list)
    raw_restore_mib: list[float] = field(default_factory=list)
    rik_snapshot_s: float = 0.0
    raw_snapshot_s: float = 0.0
    clones: list[float] = field(default_factory=list)
    clones_all_s: float = 0.0


async def measure(
    rik: Rik, raw: RawMachine, runs: int, clones: int, log: Callable[[str], None], boot_runs: int | None = None
) -> Figures:
    figures = Figures(accel=raw.accel)

    async def step(name: str, call: Awaitable[Any]) -> Any:
        started = time.monotonic()
        result = await call
        log(f"{name}: {time.monotonic() - started:.1f}s")
        return result

    # Warm-up: pulls the image and builds the root disk; the timed boots start from warm caches.
    await step("warm-up boot", rik.start("vmb-warm"))
    await step("warm-up delete", rik.delete("vmb-warm"))
    source: tuple[str, str] | None = None
    boots = runs if boot_runs is None else boot_runs
    for run in range(boots):
        [(instance_id, took)] = await step(f"rik boot {run}", rik.start(f"vmb-boot{run}"))
        figures.rik_boot.append(took)
        figures.rik_boot_mib.append(private_mib(rik.pid(instance_id)))
        if run < boots - 1:
            await step("rik delete", rik.delete(f"vmb-boot{run}"))
        else:
            address = (await rik.client.get_instance(instance_id)).address
            assert address is not None
            source = (instance_id, address)
        took, mib, directory, pid = await step(f"raw boot {run}", raw.boot())
        figures.raw_boot.append(took)
        figures.raw_boot_mib.append(mib)
        if run < boots - 1:
            raw.kill(pid)
        else:
            raw_source = (directory, pid)
    assert source is not None
    figures.rik_snapshot_s = await step("rik snapshot", rik.snapshot(source[0]))
    raw_snapshot = raw.workdir / "raw-snapshot"
    figures.raw_snapshot_s = await step("raw snapshot", raw.snapshot(*raw_source, raw_snapshot))
    for run in range(runs):
        figures.rik_resume.append(await step(f"rik resume {run}", rik.resume(*source)))
    for run in range(runs):
        [(instance_id, took)] = await step(f"rik restore {run}", rik.start(f"vmb-rest{run}", 1, SNAPSHOT))
        figures.rik_restore.append(took)
        figures.rik_restore_mib.append(private_mib(rik.pid(instance_id)))
        await step("rik delete", rik.delete(f"vmb-rest{run}"))
        took, mib, pid = await step(f"raw restore {run}", raw.restore(raw_snapshot))
        figures.raw_restore.append(took)
        figures.raw_restore_mib.append(mib)
        figures.raw_resume.append(await step(f"raw resume {run}", raw.resume(pid)))
        raw.kill(pid)
    served = await step(f"rik {clones} clones", rik.start("vmb-clones", clones, SNAPSHOT))
    figures.clones = [took for _, took in served]
    figures.clones_all_s = max(figures.clones)
    await step("rik delete clones", rik.delete("vmb-clones"))
    await rik.delete(f"vmb-boot{boots - 1}")
    return figures


async def cleanup_rik(url: str, runs: int) -> None:
    async with RikClient(url, timeout=60) as client:
        rik = Rik(url, "", Path(), client)
        names = ["vmb-warm", "vmb-clones", *(f"vmb-boot{i}" for i in range(runs))]
        names += [f"vmb-rest{i}" for i in range(runs)]
        for name in names:
            with contextlib.suppress(Exception):
                await rik.delete(name)
        with contextlib.suppress(Exception):
            await rik.delete_snapshot()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--boot-runs", type=int, default=None, help="boot runs (default: --runs; at least 1)")
    parser.add_argument("--clones", type=int, default=5)
    parser.add_argument("--trace", action="store_true", help="print every instance event of a timed start")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the controller and riklet logs here")
    args = parser.parse_args()
    if args.boot_runs is not None and args.boot_runs < 1:
        parser.error("--boot-runs must be at least 1")
    if os.geteuid() != 0:
        sys.exit("vm_start: needs root (QEMU, taps, network namespaces)")

    def log(line: str) -> None:
        print(f"vm_start: {line}", file=sys.stderr, flush=True)

    oci_ref = python_http_image()
    log(f"image {oci_ref}")
    with tempfile.TemporaryDirectory(prefix="rik-vmbench-") as tmp:
        workdir = Path(tmp)
        registry = start_registry(workdir / "registry")
        riklet_dir = workdir / "riklet"
        riklet: subprocess.Popen[bytes] | None = None
        raw: RawMachine | None = None
        try:
            raw = asyncio.run(raw_machine(oci_ref, workdir))
            image = push_oci(oci_ref, registry.address)
            with controller(workdir) as url:
                port = free_port()
                riklet = subprocess.Popen(
                    [sys.executable, "-m", "rik.riklet", "--name", "vmbench", "--controller", url]
                    + ["--address", "127.0.0.1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(riklet_dir)]
                    + ["--bridge", BRIDGE, "--subnet", SUBNET, "--insecure-registry", registry.address]
                    + ["--guest-dir", str(GUEST_DIR), "--log-level", os.environ.get("RIK_LOG_LEVEL", "WARNING")],
                    stdout=(workdir / "riklet.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
                wait_http(f"http://127.0.0.1:{port}/healthz", 120, riklet)

                async def run() -> Figures:
                    # No keep-alive: every probe opens a new connection, as a new client would.
                    limits = httpx.Limits(max_keepalive_connections=0)
                    http = httpx.AsyncClient(timeout=1, limits=limits)
                    async with RikClient(url, timeout=60) as client, http:
                        assert raw is not None
                        raw.http = http
                        rik = Rik(url, image, riklet_dir, client, http, args.trace)
                        return await measure(rik, raw, args.runs, args.clones, log, args.boot_runs)

                try:
                    figures = asyncio.run(run())
                finally:
                    asyncio.run(cleanup_rik(url, args.runs))
                    riklet.terminate()
                    riklet.wait(timeout=30)
        except BaseException:
            for name in ("riklet.log", "controller.log"):
                with contextlib.suppress(OSError):
                    sys.stderr.write(f"--- {name} (tail)\n" + (workdir / name).read_text()[-4000:])
            raise
        finally:
            if riklet is not None and riklet.poll() is None:
                riklet.kill()
                riklet.wait()
            if raw is not None:
                raw.kill_all()
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for name in ("riklet.log", "controller.log"):
                    with contextlib.suppress(OSError):
                        shutil.copyfile(workdir / name, args.keep_logs / name)
            teardown(riklet_dir)
            stop_registry(registry)
    print_figures(figures, args.runs, args.clones, args.boot_runs)


def push_oci(oci_ref: str, registry: str) -> str:
    dest = f"{registry}/bench/python-http:1"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", oci_ref, f"docker://{dest}"],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return dest


def teardown(riklet_dir: Path) -> None:
    """`riklet --teardown`: every instance this node ran, then its bridge and firewall rules."""
    if (riklet_dir / "subnet").is_file():
        subprocess.run(
            [sys.executable, "-m", "rik.riklet", "--teardown", "--name", "vmbench", "--data-dir", str(riklet_dir)]
            + ["--bridge", BRIDGE, "--address", "127.0.0.1", "--guest-dir", str(GUEST_DIR)],
            check=False,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )


def print_figures(f: Figures, runs: int, clones: int, boot_runs: int | None = None) -> None:
    med = statistics.median
    boot, raw_boot = med(f.rik_boot), med(f.raw_boot)
    restore, raw_restore = med(f.rik_restore), med(f.raw_restore)
    resume, raw_resume = med(f.rik_resume), med(f.raw_resume)
    rate = clones / f.clones_all_s
    ms = lambda seconds: f"{seconds * 1000:.0f} ms"  # noqa: E731
    report(
        f"VM start-to-serving (Python HTTP image, {f.accel}): medians of {runs}"
        + ("" if boot_runs in (None, runs) else f" ({boot_runs} boot runs)"),
        [
            ("accelerator", f.accel),
            ("RIK boot → serving", ms(boot)),
            ("raw QEMU boot → serving", ms(raw_boot)),
            ("ratio RIK / raw, boot", f"{boot / raw_boot:.2f}x"),
            ("RIK restore → serving", ms(restore)),
            ("raw QEMU restore → serving", ms(raw_restore)),
            ("ratio RIK / raw, restore", f"{restore / raw_restore:.2f}x"),
            ("RIK resume → serving", ms(resume)),
            ("raw QEMU resume (stop, cont) → serving", ms(raw_resume)),
            ("ratio RIK / raw, resume", f"{resume / raw_resume:.2f}x"),
            ("RIK snapshot (API → Ready), once", ms(f.rik_snapshot_s)),
            ("raw snapshot (stop + migrate), once", ms(f.raw_snapshot_s)),
            ("private memory, RIK booted VM", f"{med(f.rik_boot_mib):.0f} MiB"),
            ("private memory, raw booted VM", f"{med(f.raw_boot_mib):.0f} MiB"),
            ("private memory, RIK restored VM", f"{med(f.rik_restore_mib):.0f} MiB"),
            ("private memory, raw restored VM", f"{med(f.raw_restore_mib):.0f} MiB"),
            (f"RIK {clones} clones restored at once: all serving", ms(f.clones_all_s)),
            ("VMs started per second (clones / all serving)", f"{rate:.2f}/s"),
        ],
        {
            "accel": f.accel,
            "runs": runs,
            "rik_boot_s": f.rik_boot,
            "raw_boot_s": f.raw_boot,
            "rik_boot_median_s": boot,
            "raw_boot_median_s": raw_boot,
            "boot_ratio": boot / raw_boot,
            "rik_restore_s": f.rik_restore,
            "raw_restore_s": f.raw_restore,
            "rik_restore_median_s": restore,
            "raw_restore_median_s": raw_restore,
            "restore_ratio": restore / raw_restore,
            "rik_resume_s": f.rik_resume,
            "rik_resume_median_s": resume,
            "raw_resume_s": f.raw_resume,
            "raw_resume_median_s": raw_resume,
            "resume_ratio": resume / raw_resume,
            "rik_snapshot_s": f.rik_snapshot_s,
            "raw_snapshot_s": f.raw_snapshot_s,
            "rik_boot_private_mib": med(f.rik_boot_mib),
            "raw_boot_private_mib": med(f.raw_boot_mib),
            "rik_restore_private_mib": med(f.rik_restore_mib),
            "raw_restore_private_mib": med(f.raw_restore_mib),
            "clones": clones,
            "clones_s": f.clones,
            "clones_all_serving_s": f.clones_all_s,
            "vms_per_second": rate,
        },
    )


if __name__ == "__main__":
    main()
