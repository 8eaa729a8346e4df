"""`VMDriver`: runs `VM` instances under QEMU `-M microvm`, driven over QMP.

Per instance, under `<state_dir>/instances/<key>/` (`key` derives from the instance id, so `destroy`
cleans up from the id alone)::

    instance.json    the instance id and the cached root disk it uses (for the disk cache's eviction)
    overlay.qcow2    the instance's copy-on-write layer over the cached ext4 root disk (or a snapshot's disk)
    config.img       the configuration disk (/dev/vdb) read by RIK's guest init
    console.log      the serial console: kernel messages, the entrypoint's output, "RIK-EXIT <status>"
    qemu.log         QEMU's own errors
    qemu.pid         the daemonized QEMU's pid
    boot/            kernel and initrd taken from an image that brings its own

and `<run_dir>/<key>.qmp`, the QMP socket (kept short: unix socket paths are limited to 108 bytes).

A snapshot directory holds `state` (the migration stream), `disk.qcow2` (the instance's overlay at that
moment), `base.ext4` (a hard link to, or copy of, the root disk it is backed by), `config.img`, the kernel
and initramfs, and `snapshot.json`. A restore gives each clone its own overlay backed by `disk.qcow2`: a
copy of `clone-<hash>.qcow2`, the empty overlay made by the snapshot's first restore (the hash is of the
absolute path of `disk.qcow2`, which the overlay names as its backing file).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp.error import QMPError

from rik.drivers._files import read_tail, recorded_instance_ids
from rik.drivers.base import Capabilities, DriverError, Handle, Inspection, InstanceRequest, ProgressCallback
from rik.drivers.process import process_args, process_env
from rik.drivers.vm import _process as proc
from rik.drivers.vm import _qmp as qmp
from rik.drivers.vm._accel import probe_accel
from rik.drivers.vm._assets import GuestAssets, GuestKernel
from rik.drivers.vm._commands import run
from rik.drivers.vm._config_disk import GuestConfig, config_disk
from rik.drivers.vm._disks import DiskCache, is_disk_url
from rik.drivers.vm._link import GUEST_ADDRESS, HOST_ADDRESS, PREFIXLEN, setup_guest_link
from rik.drivers.vm._qemu import InstanceFiles, MachineConfig, kernel_cmdline, launch, qemu_argv, qemu_available
from rik.images import ImageConfig, ImageStore, UnpackedImage
from rik.model import PortBinding, WorkloadSpec
from rik.network import Attachment, NetworkError, NodeNetwork

logger = logging.getLogger(__name__)
A = TypeVar("A")
B = TypeVar("B")

STATE_VERSION = 1
SNAPSHOT_VERSION = 1
_LOG_TAIL = 2048
_START_MARK = b"RIK-ENTRYPOINT-START"
_EXIT_MARK = b"RIK-EXIT "
_TOOLS = ("qemu-img", "mkfs.ext4", "nsenter", "ip", "iptables-restore", "apt-get", "dpkg-deb", "cp")


@dataclass(frozen=True)
class _Paths:
    key: str
    directory: Path
    qmp_socket: Path

    @property
    def meta(self) -> Path:
        return self.directory / "instance.json"

    @property
    def overlay(self) -> Path:
        return self.directory / "overlay.qcow2"

    @property
    def config_disk(self) -> Path:
        return self.directory / "config.img"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def boot(self) -> Path:
        return self.directory / "boot"

    def files(self) -> InstanceFiles:
        return InstanceFiles(self.overlay, self.config_disk, self.console_log, self.qmp_socket, self.pid_file)


class VMDriver:
    """Runs `VM` instances as QEMU microvms; see the module docstring for the on-disk layout.

    `state_dir` belongs to this driver; `network` must have been `setup()`; `images` may be shared.
    `assets` provides the guest kernel (default: `GuestAssets(state_dir / "guest")`; pass one over a shared
    directory such as /var/lib/rik/guest to provision once per machine). `disk_cache_mib` caps the root
    disk cache. `accel` forces "kvm" or "tcg" instead of probing. `boot_timeout` bounds QEMU launch → serving.
    `min_memory_mib` is the guest RAM floor (the stock kernel needs about 128 MiB to boot).
    """

    name = "vm"
    capabilities = Capabilities(snapshots=True, pause=True)

    def __init__(
        self,
        state_dir: Path,
        network: NodeNetwork,
        images: ImageStore,
        *,
        assets: GuestAssets | None = None,
        disk_cache_mib: int = 8192,
        run_dir: Path | None = None,
        accel: str | None = None,
        boot_timeout: float = 60.0,
        min_memory_mib: int = 128,
    ) -> None:
        self._state_dir = state_dir
        self._instances_dir = state_dir / "instances"
        self._network = network
        self._images = images
        self._assets = assets or GuestAssets(state_dir / "guest")
        self._disks = DiskCache(state_dir / "disks", cap_mib=disk_cache_mib, in_use=self._disks_in_use)
        tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
        self._run_dir = run_dir or Path("/run/rik-vm") / tag
        self._accel = accel
        self._boot_timeout = boot_timeout
        # Starts and restores in progress: the run directory (QMP sockets) must not be removed under them.
        self._launches = 0
        self._min_memory_mib = min_memory_mib
        self._kernel: GuestKernel | None = None
        self._ready_lock = asyncio.Lock()

    # Readiness --------------------------------------------------------------------------------------------

    async def probe(self) -> str | None:
        """Provision the guest kernel (the first time: a download) and choose the accelerator."""
        if not qemu_available():
            return "qemu-system-x86_64 and qemu-img are not installed"
        missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
        if missing:
            return f"missing tools: {', '.join(missing)}"
        if not Path("/dev/net/tun").exists():
            return "/dev/net/tun is missing"
        try:
            await self._ensure_ready()
        except DriverError as exc:
            return exc.message
        return None

    async def _ensure_ready(self) -> tuple[GuestKernel, str]:
        async with self._ready_lock:
            if self._kernel is None:
                started = time.monotonic()
                self._kernel = await self._assets.ensure()
                logger.info(
                    "guest kernel ready",
                    extra={"version": self._kernel.version, "seconds": round(time.monotonic() - started, 2)},
                )
            if self._accel is None:
                self._accel = await probe_accel(self._kernel, self._assets.directory / "accel.json")
            return self._kernel, self._accel

    # Lifecycle --------------------------------------------------------------------------------------------

    async def start(self, request: InstanceRequest, progress: ProgressCallback) -> Handle:
        self._launches += 1
        try:
            # An image is leased across the start: its bundle is needed until the root disk is built and
            # the image's own kernel (if any) copied; a running VM no longer uses it.
            async with contextlib.AsyncExitStack() as leases:
                return await self._start(request, progress, leases)
        finally:
            self._launches -= 1
            self._tidy_run_dir()

    async def _start(
        self, request: InstanceRequest, progress: ProgressCallback, leases: contextlib.AsyncExitStack
    ) -> Handle:
        kernel, accel = await self._ensure_ready()
        spec = request.spec
        paths = self._paths(request.id)
        vm = spec.vm
        try:
            image: UnpackedImage | None = None
            if is_disk_url(spec.image):
                # The raw-disk form: a root file system with no image config (see _disks).
                config, digest = ImageConfig(), spec.image
                if not process_args(spec, config):
                    raise DriverError("NoCommand", f"{spec.image} is a raw disk: set spec.command to what it runs")
                await progress("BuildingDisk", f"root disk from {spec.image}")
                base = await self._disks.raw_disk(spec.image, vm.disk_size if vm else None)
            else:
                image = await leases.enter_async_context(self._images.lease(spec.image, progress))
                config, digest = image.config, image.digest
                if not process_args(spec, config):
                    raise DriverError("NoCommand", "neither the spec nor the image defines a command (entrypoint/cmd)")
                await progress("BuildingDisk", f"root disk for {image.digest}")
                base = await self._disks.disk_for(image, vm.disk_size if vm else None)
            argv = process_args(spec, config)
            hostname = request.id[:63]
            await asyncio.to_thread(self._prepare_directory, paths, request.id, base)
            await self._qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(paths.overlay))
            rootfs = image.rootfs if image is not None else None
            machine = await asyncio.to_thread(self._machine, spec, rootfs, kernel, accel, paths)
            guest = GuestConfig(
                hostname=hostname,
                argv=argv,
                env=process_env(spec, config, hostname),
                working_dir=spec.working_dir or config.working_dir or "/",
                address=GUEST_ADDRESS,
                prefixlen=PREFIXLEN,
                gateway=HOST_ADDRESS,
            )
            await asyncio.to_thread(paths.config_disk.write_bytes, config_disk(guest))
            attachment = await self._network.attach(request.id)
            await setup_guest_link(attachment.netns_name, attachment.netns_path, spec.ports)
            await progress("Booting", f"booting {machine.memory_mib} MiB, {machine.vcpus} vCPU ({accel})")
            # The boot clock starts at QEMU's launch: a pull or a disk build on a loaded host is not the boot.
            started = time.monotonic()
            pid = await self._launch(paths, machine, attachment.netns_path, request.id)
            await self._wait_serving(paths, pid, attachment.ip, spec, started)
            bindings = await self._network.expose(request.id, attachment.ip, spec.ports)
        except NetworkError as exc:
            await self._cleanup_after_failure(request.id)
            raise DriverError(exc.reason, exc.message) from exc
        except BaseException:
            await self._cleanup_after_failure(request.id)
            raise
        await asyncio.to_thread(self._write_machine, paths, machine)
        logger.info(
            "vm started",
            extra={
                "instance": request.id, "ip": attachment.ip, "pid": pid, "accel": accel,
                "boot_seconds": round(time.monotonic() - started, 3),
            },
        )  # fmt: skip
        return self._handle(request.id, paths, attachment.ip, attachment.netns_name, pid, bindings, digest)

    async def inspect(self, handle: Handle) -> Inspection:
        paths = self._paths(handle.id)
        pid = self._pid(handle.state, paths)
        if pid is not None and proc.is_ours(pid, str(paths.qmp_socket)):
            status = await qmp.status(paths.qmp_socket)
            if status in ("paused", "postmigrate"):
                return Inspection(running=True, reason="Paused")
            return Inspection(running=True, reason="Running")
        code = await asyncio.to_thread(_exit_status, paths.console_log)
        if code is None and not paths.directory.exists():
            return Inspection(running=False, reason="NotFound")
        return Inspection(running=False, exit_code=code, reason="Exited")

    async def stop(self, handle: Handle, grace_seconds: float) -> None:
        """ACPI power button (the guest init sends SIGTERM to the entrypoint), then `quit`, then SIGKILL."""
        paths = self._paths(handle.id)
        pid = self._pid(handle.state, paths)
        marker = str(paths.qmp_socket)
        if pid is None or not proc.is_ours(pid, marker):
            return
        try:
            async with qmp.session(paths.qmp_socket) as client:
                status = await client.execute("query-status")
                if isinstance(status, dict) and status.get("status") != "running":
                    await client.execute("cont")
                await client.execute("system_powerdown")
        except (DriverError, QMPError, OSError) as exc:
            logger.warning("cannot press the power button", extra={"instance": handle.id, "error": str(exc)})
        if await proc.wait_gone(pid, marker, grace_seconds):
            return
        logger.info("vm ignored the power button; quitting", extra={"instance": handle.id})
        with contextlib.suppress(DriverError, QMPError, OSError):
            await qmp.execute(paths.qmp_socket, "quit")
        if not await proc.wait_gone(pid, marker, 2.0):
            await proc.kill(pid, marker)

    async def destroy(self, handle: Handle) -> None:
        # Shielded: an interrupted destroy would leave exactly what it exists to remove.
        await asyncio.shield(self._destroy(handle.id, handle.state))

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        if state.get("version") != STATE_VERSION or "instance_id" not in state:
            return None
        instance_id = str(state["instance_id"])
        paths = self._paths(instance_id)
        pid = self._pid(state, paths)
        if pid is None or not proc.is_ours(pid, str(paths.qmp_socket)):
            return None
        if await qmp.status(paths.qmp_socket) is None:
            return None
        ports = [PortBinding.model_validate(p) for p in state.get("ports", [])]
        logger.info("vm recovered", extra={"instance": instance_id, "pid": pid})
        return Handle(id=instance_id, driver=self.name, address=state.get("ip"), ports=ports, state=dict(state))

    async def logs(self, handle: Handle, tail_bytes: int | None) -> bytes:
        return await asyncio.to_thread(read_tail, self._paths(handle.id).console_log, tail_bytes)

    async def instance_ids(self) -> list[str]:
        """Instances with a directory under the state dir (for garbage collection after a restart)."""

        return await asyncio.to_thread(recorded_instance_ids, self._instances_dir)

    # Pause, resume, snapshots -----------------------------------------------------------------------------

    async def pause(self, handle: Handle) -> None:
        await self._qmp_command(handle, "stop")

    async def resume(self, handle: Handle) -> None:
        await self._qmp_command(handle, "cont")

    async def snapshot(self, handle: Handle, directory: Path) -> None:
        """Save the VM's memory and disk state into `directory`; the VM keeps running (or stays paused)."""
        paths = self._paths(handle.id)
        machine = await asyncio.to_thread(self._read_machine, paths)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        state_file = directory / "state"
        started = time.monotonic()
        try:
            async with qmp.session(paths.qmp_socket) as client:
                status = await client.execute("query-status")
                was_running = isinstance(status, dict) and status.get("status") == "running"
                await client.execute("stop")
                try:
                    uri = f"exec:cat > {shlex.quote(str(state_file))}"
                    await client.execute("migrate", {"uri": uri})
                    await qmp.wait_migration(client, "query-migrate", 300.0)
                    # Migration flushed and released the disks: copy the overlay while the guest is stopped.
                    await asyncio.to_thread(self._save_disks, paths, machine, directory)
                finally:
                    if was_running:
                        await client.execute("cont")
        except QMPError as exc:
            raise DriverError("SnapshotFailed", f"QEMU refused: {exc}") from exc
        logger.info(
            "vm snapshot taken",
            extra={"instance": handle.id, "directory": str(directory), "seconds": round(time.monotonic() - started, 3)},
        )

    async def restore(self, request: InstanceRequest, snapshot: Path, progress: ProgressCallback) -> Handle:
        """Start a new instance from the snapshot in directory `snapshot`: its own namespace, address and
        disk overlay; the guest keeps its memory (including 172.30.0.2 and its hostname) from the snapshot.

        QEMU starts as soon as the instance has its disks and an empty network namespace, loading the memory
        straight from the snapshot file (`-incoming fd:N`: no helper process, no pipe); the namespace's link
        to the bridge, the guest tap's addresses and NAT, and the host port forwards are set up while it
        loads. Only the readiness check needs both."""
        self._launches += 1
        try:
            return await self._restore(request, snapshot, progress)
        finally:
            self._launches -= 1
            self._tidy_run_dir()

    async def _restore(self, request: InstanceRequest, snapshot: Path, progress: ProgressCallback) -> Handle:
        await self._ensure_ready()
        spec = request.spec
        paths = self._paths(request.id)
        started = time.monotonic()
        snapshot_dir = snapshot
        steps = _Steps(started)
        try:
            meta = await asyncio.to_thread(_read_snapshot_meta, snapshot_dir)
            machine = MachineConfig.from_json(meta["machine"])
            machine = MachineConfig(
                machine.memory_mib, machine.vcpus, machine.accel, str(snapshot_dir / machine.kernel),
                str(snapshot_dir / machine.initramfs) if machine.initramfs else None, machine.cmdline,
            )  # fmt: skip
            await progress("Restoring", f"restoring snapshot {snapshot_dir.name}")
            await asyncio.to_thread(self._prepare_directory, paths, request.id, snapshot_dir / "base.ext4")

            async def disks() -> None:
                await self._clone_disks(snapshot_dir, paths)
                steps.mark("disks")

            async def namespace() -> Attachment:
                attachment = await self._network.create_namespace(request.id)
                steps.mark("namespace")
                return attachment

            _, attachment = await _both(disks(), namespace())

            async def resume(pid: int) -> None:
                try:
                    async with qmp.session(paths.qmp_socket, connect_seconds=30.0) as client:
                        await _wait_incoming(client, 120.0)
                except (DriverError, QMPError) as exc:
                    # QEMU exits when it cannot load the snapshot: what it said is in its log.
                    if proc.is_ours(pid, str(paths.qmp_socket)) and not isinstance(exc, QMPError):
                        raise
                    await proc.wait_gone(pid, str(paths.qmp_socket), 2.0)
                    tail = (await asyncio.to_thread(read_tail, paths.qemu_log, _LOG_TAIL)).decode(errors="replace")
                    raise DriverError(
                        "RestoreFailed", f"QEMU could not load the snapshot: {tail.strip() or exc}"
                    ) from exc
                steps.mark("resumed")

            async def link() -> None:
                # QEMU made the tap when it started (-netdev tap,ifname=tap0): configure it, do not create it.
                await self._network.connect_namespace(request.id)
                await setup_guest_link(attachment.netns_name, attachment.netns_path, spec.ports, create_tap=False)
                steps.mark("network")

            async def vm() -> int:
                state = await asyncio.to_thread(os.open, snapshot_dir / "state", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    pid = await self._launch(
                        paths, machine, attachment.netns_path, request.id, incoming=f"fd:{state}", pass_fds=(state,)
                    )
                finally:
                    os.close(state)
                steps.mark("launched")
                await _both(resume(pid), link())
                # A restored guest was serving when it was saved: it answers the first try unless it is
                # still warming up, so retry at short intervals.
                await self._wait_serving(paths, pid, attachment.ip, spec, started, marker=False, interval=0.01)
                steps.mark("serving")
                return pid

            async def beside() -> list[PortBinding]:
                # Host port forwards need only the instance's address, the machine record (for snapshots of
                # this instance) nothing: both are done from the start, off the VM's path.
                bindings = await self._network.expose(request.id, attachment.ip, spec.ports)
                steps.mark("exposed")
                await asyncio.to_thread(self._write_machine, paths, machine)
                return bindings

            pid, bindings = await _both(vm(), beside())
        except NetworkError as exc:
            await self._cleanup_after_failure(request.id)
            raise DriverError(exc.reason, exc.message) from exc
        except QMPError as exc:
            await self._cleanup_after_failure(request.id)
            raise DriverError("RestoreFailed", f"QEMU refused the snapshot: {exc}") from exc
        except BaseException:
            await self._cleanup_after_failure(request.id)
            raise
        logger.info(
            "vm restored",
            extra={
                "instance": request.id, "ip": attachment.ip, "snapshot": str(snapshot_dir),
                "seconds": round(time.monotonic() - started, 3), "steps_ms": steps.done(),
            },
        )  # fmt: skip
        return self._handle(
            request.id, paths, attachment.ip, attachment.netns_name, pid, bindings, str(meta.get("digest", ""))
        )

    async def _clone_disks(self, snapshot_dir: Path, paths: _Paths) -> None:
        """The clone's overlay over the snapshot's disk, and its config disk. Every clone of a snapshot gets
        the same empty overlay: it is made once (per snapshot location) and copied, not made per restore."""
        disk = (snapshot_dir / "disk.qcow2").resolve()
        template = snapshot_dir / f"clone-{hashlib.sha256(str(disk).encode()).hexdigest()[:12]}.qcow2"
        if not template.is_file():
            partial = template.with_name(f"{template.name}.{os.getpid()}.{id(paths)}.tmp")
            try:
                await self._qemu_img("create", "-f", "qcow2", "-b", str(disk), "-F", "qcow2", str(partial))
                await asyncio.to_thread(os.replace, partial, template)
            finally:
                await asyncio.to_thread(partial.unlink, missing_ok=True)

        def copy() -> None:
            shutil.copyfile(template, paths.overlay)
            shutil.copyfile(snapshot_dir / "config.img", paths.config_disk)

        await asyncio.to_thread(copy)

    # Internals --------------------------------------------------------------------------------------------

    def _paths(self, instance_id: str) -> _Paths:
        key = "vm-" + hashlib.sha256(instance_id.encode()).hexdigest()[:16]
        return _Paths(key, self._instances_dir / key, self._run_dir / f"{key}.qmp")

    def _pid(self, state: dict[str, Any], paths: _Paths) -> int | None:
        pid = state.get("pid")
        return pid if isinstance(pid, int) else proc.read_pid(paths.pid_file)

    def _handle(
        self, instance_id: str, paths: _Paths, ip: str, netns: str, pid: int, ports: list[PortBinding], digest: str
    ) -> Handle:
        state = {
            "version": STATE_VERSION,
            "instance_id": instance_id,
            "directory": str(paths.directory),
            "qmp_socket": str(paths.qmp_socket),
            "digest": digest,
            "ip": ip,
            "netns": netns,
            "pid": pid,
            "ports": [b.model_dump() for b in ports],
        }
        return Handle(id=instance_id, driver=self.name, address=ip, ports=ports, state=state)

    def _disks_in_use(self) -> set[Path]:
        used: set[Path] = set()
        if self._instances_dir.is_dir():
            for directory in self._instances_dir.iterdir():
                with contextlib.suppress(OSError, ValueError, KeyError):
                    used.add(Path(json.loads((directory / "instance.json").read_text())["base"]))
        return used

    def _prepare_directory(self, paths: _Paths, instance_id: str, base: Path) -> None:
        paths.directory.mkdir(parents=True, exist_ok=True)
        self._run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (paths.overlay, paths.pid_file, paths.qmp_socket, paths.console_log):
            stale.unlink(missing_ok=True)
        paths.meta.write_text(json.dumps({"id": instance_id, "base": str(base)}))

    def _machine(
        self, spec: WorkloadSpec, rootfs: Path | None, kernel: GuestKernel, accel: str, paths: _Paths
    ) -> MachineConfig:
        """The node's kernel + RIK's initramfs, or the spec's kernel, or the image's own kernel and init
        (`rootfs` is the unpacked image, None for a raw disk)."""
        vm = spec.vm
        extra = list(vm.kernel_args) if vm else []
        vcpus = vm.vcpus if vm else 1
        # Debian's kernel and initramfs do not boot in less than ~128 MiB: smaller requests get the floor.
        memory = max(spec.resources.memory, self._min_memory_mib)
        if vm is not None and vm.kernel:
            return MachineConfig(memory, vcpus, accel, vm.kernel, vm.initramfs, kernel_cmdline(extra, "/dev/vda"))
        own = _own_boot_files(rootfs) if rootfs is not None else None
        if own is not None:
            paths.boot.mkdir(exist_ok=True)
            vmlinuz, initrd = paths.boot / "vmlinuz", paths.boot / "initrd"
            shutil.copyfile(own[0], vmlinuz)
            shutil.copyfile(own[1], initrd)
            return MachineConfig(memory, vcpus, accel, str(vmlinuz), str(initrd), kernel_cmdline(extra, "/dev/vda"))
        return MachineConfig(memory, vcpus, accel, str(kernel.kernel), str(kernel.initramfs), kernel_cmdline(extra))

    def _write_machine(self, paths: _Paths, machine: MachineConfig) -> None:
        document = json.loads(paths.meta.read_text())
        document["machine"] = machine.to_json()
        paths.meta.write_text(json.dumps(document))

    def _read_machine(self, paths: _Paths) -> MachineConfig:
        try:
            return MachineConfig.from_json(json.loads(paths.meta.read_text())["machine"])
        except (OSError, ValueError, KeyError) as exc:
            raise DriverError("SnapshotFailed", f"no machine record for {paths.key}: {exc}") from exc

    def _save_disks(self, paths: _Paths, machine: MachineConfig, directory: Path) -> None:
        base = Path(json.loads(paths.meta.read_text())["base"])
        _link_or_copy(base, directory / "base.ext4")
        shutil.copyfile(paths.overlay, directory / "disk.qcow2")
        shutil.copyfile(paths.config_disk, directory / "config.img")
        _link_or_copy(Path(machine.kernel), directory / "vmlinuz")
        if machine.initramfs:
            _link_or_copy(Path(machine.initramfs), directory / "initramfs")
        # The copy must name its backing file relative to itself, so the snapshot directory is self-contained.
        subprocess.run(
            ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "base.ext4", "-F", "raw", str(directory / "disk.qcow2")],
            check=True,
            capture_output=True,
        )
        meta = {
            "version": SNAPSHOT_VERSION,
            "machine": {
                **machine.to_json(),
                "kernel": "vmlinuz",
                "initramfs": "initramfs" if machine.initramfs else None,
            },
            "created": time.time(),
        }
        (directory / "snapshot.json").write_text(json.dumps(meta))

    async def _qemu_img(self, *args: str) -> None:
        result = await run("qemu-img", *args)
        if not result.ok:
            raise DriverError("DiskBuildFailed", result.describe())

    async def _launch(self, paths: _Paths, machine: MachineConfig, netns_path: str, instance_id: str, *,
                      incoming: str | None = None, pass_fds: tuple[int, ...] = ()) -> int:  # fmt: skip
        argv = qemu_argv(machine, paths.files(), name=f"rik-{paths.key}", incoming=incoming)
        code = await launch(argv, netns_path, paths.qemu_log, pass_fds)
        if code != 0:
            tail = (await asyncio.to_thread(read_tail, paths.qemu_log, _LOG_TAIL)).decode(errors="replace").strip()
            raise DriverError("QemuFailed", f"QEMU exited with status {code}: {tail or '(no output)'}")
        pid = proc.read_pid(paths.pid_file)
        if pid is None:
            # QEMU removes its pid file as it exits: a restore whose snapshot does not load ends that fast.
            tail = (await asyncio.to_thread(read_tail, paths.qemu_log, _LOG_TAIL)).decode(errors="replace").strip()
            if incoming:
                what = "QEMU exited while loading the snapshot (a damaged snapshot, or one from another QEMU?)"
                raise DriverError("RestoreFailed", f"{what}: {tail}" if tail else what)
            raise DriverError("QemuFailed", f"QEMU exited at once: {tail or 'it wrote no pid file'}")
        logger.debug("qemu launched", extra={"instance": instance_id, "pid": pid, "argv": argv})
        return pid

    async def _wait_serving(
        self,
        paths: _Paths,
        pid: int,
        ip: str,
        spec: WorkloadSpec,
        started: float,
        *,
        marker: bool = True,
        interval: float = 0.05,
    ) -> None:
        """Until a TCP connect to the first declared TCP port succeeds (or, without one, the guest init
        reaches the entrypoint), trying every `interval` seconds; `BootTimeout` after the deadline,
        `BootFailed` if the VM powers off."""
        port = next((p.port for p in spec.ports if p.protocol == "tcp"), None)
        deadline = started + self._boot_timeout
        while True:
            if port is not None and await _connects(ip, port):
                return
            if port is None and (
                not marker or _START_MARK in await asyncio.to_thread(read_tail, paths.console_log, None)
            ):
                return
            if not proc.is_ours(pid, str(paths.qmp_socket)):
                code = await asyncio.to_thread(_exit_status, paths.console_log)
                raise DriverError(
                    "BootFailed", f"the VM stopped (exit status {code}): {await self._console_tail(paths)}"
                )
            if time.monotonic() > deadline:
                raise DriverError(
                    "BootTimeout",
                    f"not serving after {self._boot_timeout:.0f} s: {await self._console_tail(paths)}",
                )
            await asyncio.sleep(interval)

    async def _console_tail(self, paths: _Paths) -> str:
        text = (await asyncio.to_thread(read_tail, paths.console_log, _LOG_TAIL)).decode(errors="replace").strip()
        return text or "(no console output)"

    async def _qmp_command(self, handle: Handle, command: str) -> None:
        paths = self._paths(handle.id)
        try:
            await qmp.execute(paths.qmp_socket, command)
        except QMPError as exc:
            raise DriverError("QMPFailed", f"{command}: {exc}") from exc

    async def _cleanup_after_failure(self, instance_id: str) -> None:
        try:
            await asyncio.shield(self._destroy(instance_id, {}))
        except Exception:
            logger.exception("cleanup after a failed start failed", extra={"instance": instance_id})

    async def _destroy(self, instance_id: str, state: dict[str, Any]) -> None:
        paths = self._paths(instance_id)
        marker = str(paths.qmp_socket)
        for pid in {self._pid(state, paths), proc.read_pid(paths.pid_file)}:
            if pid is not None and not await proc.kill(pid, marker):
                logger.warning("vm process survived SIGKILL", extra={"instance": instance_id, "pid": pid})
        await self._network.release(instance_id)
        await asyncio.to_thread(shutil.rmtree, paths.directory, True)
        await asyncio.to_thread(paths.qmp_socket.unlink, missing_ok=True)
        self._tidy_run_dir()
        logger.info("vm destroyed", extra={"instance": instance_id})

    def _tidy_run_dir(self) -> None:
        """Remove the run directory once its last VM is gone (it then holds no QMP socket) and no start is
        under way. On the loop's thread, so no start can make the directory between the check and the
        removal."""
        if self._launches == 0:
            with contextlib.suppress(OSError):
                self._run_dir.rmdir()


class _Steps:
    """Milliseconds from the start of an operation to the end of each of its steps (for the logs)."""

    def __init__(self, started: float) -> None:
        self._started = started
        self._marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self._marks[name] = round((time.monotonic() - self._started) * 1000, 1)

    def done(self) -> dict[str, float]:
        self.mark("done")
        return dict(self._marks)


async def _both(first: Coroutine[Any, Any, A], second: Coroutine[Any, Any, B]) -> tuple[A, B]:
    """Run two independent steps at once. If one fails, the other is cancelled (and has ended when this
    returns), and the failure is raised as itself, not in an exception group."""
    try:
        async with asyncio.TaskGroup() as group:
            one, two = group.create_task(first), group.create_task(second)
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return one.result(), two.result()


async def _connects(ip: str, port: int) -> bool:
    try:
        async with asyncio.timeout(0.5):
            _, writer = await asyncio.open_connection(ip, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _wait_incoming(client: Any, seconds: float) -> None:
    """Until the incoming migration is loaded; then make sure the guest runs."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        status = await client.execute("query-status")
        state = status.get("status") if isinstance(status, dict) else None
        if state == "running":
            return
        if state in ("paused", "postmigrate", "prelaunch"):
            await client.execute("cont")
            return
        if state not in ("inmigrate", None):
            raise DriverError("RestoreFailed", f"QEMU is {state} after loading the snapshot")
        if asyncio.get_running_loop().time() > deadline:
            raise DriverError("RestoreFailed", f"the snapshot did not load in {seconds:.0f} s")
        await asyncio.sleep(0.005)


def _own_boot_files(rootfs: Path) -> tuple[Path, Path] | None:
    """An image's own kernel and initrd, when it also has /sbin/init (a full OS image)."""
    boot = rootfs / "boot"
    if not boot.is_dir() or not (rootfs / "sbin" / "init").exists():
        return None
    kernels = sorted(p for p in boot.glob("vmlinuz*") if p.is_file())
    initrds = sorted(p for p in boot.glob("initrd*") if p.is_file())
    return (kernels[-1], initrds[-1]) if kernels and initrds else None


def _read_snapshot_meta(directory: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads((directory / "snapshot.json").read_text())
    except (OSError, ValueError) as exc:
        raise DriverError("SnapshotNotFound", f"no usable snapshot in {directory}: {exc}") from exc
    if document.get("version") != SNAPSHOT_VERSION or not (directory / "state").is_file():
        raise DriverError("SnapshotNotFound", f"{directory} holds no complete snapshot")
    return document


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _exit_status(console: Path) -> int | None:
    """The entrypoint's exit status that the guest init printed last, if any."""
    data = read_tail(console, 4096)
    index = data.rfind(_EXIT_MARK)
    if index < 0:
        return None
    words = data[index + len(_EXIT_MARK) :].split()
    try:
        return int(words[0]) if words else None
    except ValueError:
        return None
