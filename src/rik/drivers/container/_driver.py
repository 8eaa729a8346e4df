"""`ContainerDriver`: runs instances as OCI containers (runc or crun) on the node network.

Per instance, under `<state_dir>/instances/<container id>/`::

    upper/ work/     overlay layers over the cached image rootfs (bundles/<digest>/rootfs)
    rootfs/          the overlay mount point, the container's root
    bundle/          config.json (from umoci's, with our process, netns and limits)
    container.log    the container's stdout+stderr (and the runtime's own errors)
    pid              the container's init pid
    instance.json    the instance id and its image's digest (which pins the image in the image store)

Every name is derived from the instance id, so `destroy` cleans up from the id alone, even when
`start` failed before any state was returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rik.drivers._files import read_tail, recorded_instance_ids
from rik.drivers.base import Capabilities, DriverError, Handle, Inspection, InstanceRequest, ProgressCallback
from rik.drivers.container import _cgroups as cgroups
from rik.drivers.container._rootfs import MountError, mount_overlay, unmount, write_network_files
from rik.drivers.container._runtime import OCIRuntime, candidates, probe_runtime
from rik.drivers.container._spec import Limits, container_config, process_args, process_env
from rik.drivers.readiness import connects, first_tcp_port
from rik.images import ImageStore
from rik.model import PortBinding
from rik.network import NetworkError, NodeNetwork

logger = logging.getLogger(__name__)

STATE_VERSION = 1
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LOG_TAIL = 2048


@dataclass(frozen=True)
class _InstancePaths:
    container_id: str
    directory: Path

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"

    @property
    def bundle(self) -> Path:
        return self.directory / "bundle"

    @property
    def log(self) -> Path:
        return self.directory / "container.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"


class ContainerDriver:
    """Runs `Pod` instances as containers; see the module docstring for the on-disk layout.

    `state_dir` belongs to this driver (one per riklet); `network` must have been `setup()`; `images`
    may be shared with other drivers. `runtime` forces "runc" or "crun" instead of detecting.
    """

    name = "container"
    capabilities = Capabilities()

    def __init__(
        self,
        state_dir: Path,
        network: NodeNetwork,
        images: ImageStore,
        *,
        runtime: str | None = None,
        pids_limit: int = 1024,
        settle_seconds: float = 0.2,
        ready_timeout: float = 60.0,
        cgroup_parent: str | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._instances_dir = state_dir / "instances"
        self._network = network
        self._images = images
        self._preferred = runtime
        self._pids_limit = pids_limit
        self._settle_seconds = settle_seconds
        self._ready_timeout = ready_timeout
        # Riklets sharing a machine must not share a cgroup parent: derive it from the state directory.
        self._cgroup_parent = cgroup_parent or (
            "rik-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
        )
        self._runtime: OCIRuntime | None = None
        self._runtime_error: str | None = None
        self._runtime_lock = asyncio.Lock()
        images.add_pins(self.images_in_use)

    # Runtime detection ------------------------------------------------------------------------------------

    async def probe(self) -> str | None:
        """Detect a working runtime by running a tiny container once; None if one works, else why not."""
        async with self._runtime_lock:
            if self._runtime is not None:
                return None
            missing = [tool for tool in ("skopeo", "umoci") if shutil.which(tool) is None]
            if missing:
                self._runtime_error = f"missing tools: {', '.join(missing)}"
                return self._runtime_error
            await _restore_cgroup_mounts()
            runtimes = candidates(self._state_dir / "runtime", self._preferred)
            if not runtimes:
                self._runtime_error = "neither runc nor crun is installed"
                return self._runtime_error
            errors = []
            for runtime in runtimes:
                started = time.monotonic()
                error = await probe_runtime(runtime, self._cgroup_parent)
                if error is None:
                    logger.info(
                        "container runtime detected",
                        extra={"runtime": runtime.name, "probe_seconds": round(time.monotonic() - started, 3)},
                    )
                    self._runtime, self._runtime_error = runtime, None
                    return None
                errors.append(error)
            self._runtime_error = "; ".join(errors)
            return self._runtime_error

    async def _ensure_runtime(self) -> OCIRuntime:
        if self._runtime is None:
            error = await self.probe()
            if error is not None or self._runtime is None:
                raise DriverError("RuntimeUnavailable", f"no working container runtime: {error}")
        return self._runtime

    def _runtime_for(self, state: dict[str, Any]) -> OCIRuntime:
        """The runtime that started a container (it may differ from the one detected now)."""
        name = str(state.get("runtime") or (self._runtime.name if self._runtime else "runc"))
        if self._runtime is not None and self._runtime.name == name:
            return self._runtime
        for runtime in candidates(self._state_dir / "runtime", name):
            return runtime
        return OCIRuntime(name, self._state_dir / "runtime" / name)

    # Lifecycle --------------------------------------------------------------------------------------------

    async def start(self, request: InstanceRequest, progress: ProgressCallback) -> Handle:
        runtime = await self._ensure_runtime()
        # The image's lease ends only once `instance.json` names its digest (see `images_in_use`), or the
        # start failed and everything is removed again: no trim of the image store falls in between.
        async with contextlib.AsyncExitStack() as leases:
            return await self._start(request, progress, runtime, leases)

    async def _start(
        self,
        request: InstanceRequest,
        progress: ProgressCallback,
        runtime: OCIRuntime,
        leases: contextlib.AsyncExitStack,
    ) -> Handle:
        paths = self._paths(request.id)
        spec = request.spec
        try:
            image = await leases.enter_async_context(self._images.lease(spec.image, progress))
            await progress("Creating", f"creating container from {image.digest}")
            attachment = await self._network.attach(request.id)
            hostname = request.id[:63]
            await asyncio.to_thread(self._prepare_directories, paths, request.id, image.digest)
            await asyncio.to_thread(write_network_files, paths.upper, image.rootfs, hostname, attachment.ip)
            await mount_overlay(image.rootfs, paths.upper, paths.work, paths.rootfs)
            args = process_args(spec, image.config)
            if not args:
                raise DriverError("StartFailed", "neither the spec nor the image defines a command")
            template = json.loads(await asyncio.to_thread(image.runtime_config.read_text))
            config = container_config(
                template,
                args=args,
                env=process_env(spec, image.config, hostname),
                cwd=spec.working_dir or image.config.working_dir or "/",
                hostname=hostname,
                rootfs=str(paths.rootfs),
                netns_path=attachment.netns_path,
                cgroups_path=self._cgroups_path(paths),
                limits=Limits(spec.resources.cpu, spec.resources.memory, self._pids_limit),
            )
            await asyncio.to_thread((paths.bundle / "config.json").write_text, json.dumps(config, indent=1))
            await progress("Starting", f"starting {' '.join(args)[:200]}")
            code = await runtime.run_detached(paths.container_id, paths.bundle, paths.pid_file, paths.log)
            if code != 0:
                raise DriverError("StartFailed", f"{runtime.name} run failed: {await self._log_tail(paths)}")
            pid = int((await asyncio.to_thread(paths.pid_file.read_text)).strip())
            bindings = await self._network.expose(request.id, attachment.ip, spec.ports)
            await self._wait_serving(pid, attachment.ip, first_tcp_port(spec), paths)
        except NetworkError as exc:
            await self._cleanup_after_failure(request.id)
            raise DriverError(exc.reason, exc.message) from exc
        except MountError as exc:
            await self._cleanup_after_failure(request.id)
            raise DriverError("StartFailed", str(exc)) from exc
        except BaseException:
            await self._cleanup_after_failure(request.id)
            raise
        state = {
            "version": STATE_VERSION,
            "instance_id": request.id,
            "container_id": paths.container_id,
            "runtime": runtime.name,
            "directory": str(paths.directory),
            "image": spec.image,
            "digest": image.digest,
            "ip": attachment.ip,
            "netns": attachment.netns_name,
            "pid": pid,
            "cgroups_path": self._cgroups_path(paths),
            "ports": [b.model_dump() for b in bindings],
        }
        logger.info(
            "container started",
            extra={"instance": request.id, "runtime": runtime.name, "ip": attachment.ip, "pid": pid},
        )
        return Handle(id=request.id, driver=self.name, address=attachment.ip, ports=bindings, state=state)

    async def inspect(self, handle: Handle) -> Inspection:
        paths = self._paths(handle.id)
        document = await self._runtime_for(handle.state).state(paths.container_id)
        if document is None:
            return Inspection(running=False, reason="NotFound")
        status = document.get("status")
        if status in ("running", "paused"):
            return Inspection(running=True, reason=str(status).capitalize())
        return Inspection(running=False, reason="Exited" if status == "stopped" else str(status))

    async def stop(self, handle: Handle, grace_seconds: float) -> None:
        runtime = self._runtime_for(handle.state)
        paths = self._paths(handle.id)
        if not await self._is_running(runtime, paths.container_id):
            return
        await runtime.kill(paths.container_id, "TERM")
        if await self._wait_stopped(runtime, paths.container_id, grace_seconds):
            return
        logger.info("container ignored SIGTERM; killing", extra={"instance": handle.id})
        await runtime.kill(paths.container_id, "KILL")
        await self._wait_stopped(runtime, paths.container_id, 5.0)

    async def destroy(self, handle: Handle) -> None:
        # Shielded: an interrupted destroy would leave exactly the mounts and interfaces it exists to remove.
        await asyncio.shield(self._destroy(handle.id, handle.state))

    async def recover(self, state: dict[str, Any]) -> Handle | None:
        if state.get("version") != STATE_VERSION or "instance_id" not in state:
            return None
        instance_id = str(state["instance_id"])
        runtime = self._runtime_for(state)
        if not await self._is_running(runtime, self._paths(instance_id).container_id):
            return None
        ports = [PortBinding.model_validate(p) for p in state.get("ports", [])]
        logger.info("container recovered", extra={"instance": instance_id})
        return Handle(id=instance_id, driver=self.name, address=state.get("ip"), ports=ports, state=dict(state))

    async def pause(self, handle: Handle) -> None:
        raise _unsupported("pause")

    async def resume(self, handle: Handle) -> None:
        raise _unsupported("resume")

    async def snapshot(self, handle: Handle, directory: Path) -> None:
        raise _unsupported("snapshots")

    async def restore(self, request: InstanceRequest, snapshot: Path, progress: ProgressCallback) -> Handle:
        raise _unsupported("snapshots")

    async def logs(self, handle: Handle, tail_bytes: int | None) -> bytes:
        return await asyncio.to_thread(read_tail, self._paths(handle.id).log, tail_bytes)

    async def instance_ids(self) -> list[str]:
        """Instances with a directory under the state dir (for garbage collection after a restart)."""

        return await asyncio.to_thread(recorded_instance_ids, self._instances_dir)

    # Internals --------------------------------------------------------------------------------------------

    def _paths(self, instance_id: str) -> _InstancePaths:
        if _CONTAINER_ID.match(instance_id):
            container_id = instance_id
        else:
            container_id = "rik-" + hashlib.sha256(instance_id.encode()).hexdigest()[:24]
        return _InstancePaths(container_id, self._instances_dir / container_id)

    def _cgroups_path(self, paths: _InstancePaths) -> str:
        return f"/{self._cgroup_parent}/{paths.container_id}"

    def _prepare_directories(self, paths: _InstancePaths, instance_id: str, digest: str) -> None:
        for directory in (paths.upper, paths.work, paths.rootfs, paths.bundle):
            directory.mkdir(parents=True, exist_ok=True)
        (paths.directory / "instance.json").write_text(json.dumps({"id": instance_id, "digest": digest}))

    def images_in_use(self) -> set[str]:
        """Digests of the images whose bundles containers on disk use as their lower layer (blocking).

        Registered with the image store as a pin source: an instance directory lives from before the
        overlay is mounted until after it is unmounted, and names its image's digest from the start.
        """
        used: set[str] = set()
        if self._instances_dir.is_dir():
            for directory in self._instances_dir.iterdir():
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    digest = json.loads((directory / "instance.json").read_text()).get("digest")
                    if isinstance(digest, str):
                        used.add(digest)
        return used

    async def _wait_serving(self, pid: int, ip: str, port: int | None, paths: _InstancePaths) -> None:
        """Until the first declared TCP port accepts connections (without one: until the process has lived
        `settle_seconds`). `StartFailed` if the process exits first or nothing listens within `ready_timeout`."""
        started = time.monotonic()
        while True:
            if not _pid_alive(pid):
                raise DriverError("StartFailed", f"the process exited at once: {await self._log_tail(paths)}")
            elapsed = time.monotonic() - started
            if port is None and elapsed >= self._settle_seconds:
                return
            if port is not None and await connects(ip, port):
                return
            if elapsed > self._ready_timeout:
                raise DriverError(
                    "StartFailed",
                    f"nothing accepted connections on port {port} within {self._ready_timeout:g}s: "
                    f"{await self._log_tail(paths)}",
                )
            await asyncio.sleep(0.01)

    async def _is_running(self, runtime: OCIRuntime, container_id: str) -> bool:
        document = await runtime.state(container_id)
        return document is not None and document.get("status") in ("running", "paused", "created")

    async def _wait_stopped(self, runtime: OCIRuntime, container_id: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while await self._is_running(runtime, container_id):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _log_tail(self, paths: _InstancePaths) -> str:
        text = (await asyncio.to_thread(read_tail, paths.log, _LOG_TAIL)).decode(errors="replace").strip()
        return text or "(no output)"

    async def _cleanup_after_failure(self, instance_id: str) -> None:
        try:
            await asyncio.shield(self._destroy(instance_id, {}))
        except Exception:
            logger.exception("cleanup after a failed start failed", extra={"instance": instance_id})

    async def _destroy(self, instance_id: str, state: dict[str, Any]) -> None:
        paths = self._paths(instance_id)
        runtime = self._runtime_for(state)
        pid = state.get("pid")
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int(paths.pid_file.read_text().strip())
        if await runtime.state(paths.container_id) is not None:
            result = await runtime.delete(paths.container_id)
            if result.returncode != 0:
                logger.warning(
                    "runtime delete failed", extra={"instance": instance_id, "output": result.output.strip()}
                )
        if isinstance(pid, int):
            await _wait_pid_gone(pid, 5.0)
        await unmount(paths.rootfs)
        await asyncio.to_thread(cgroups.remove_cgroup, self._cgroups_path(paths))
        await self._network.release(instance_id)
        await asyncio.to_thread(shutil.rmtree, paths.directory, True)
        logger.info("container destroyed", extra={"instance": instance_id})


async def _restore_cgroup_mounts() -> None:
    for source, target, fstype, options in await asyncio.to_thread(cgroups.missing_cgroup_mounts):
        await asyncio.to_thread(Path(target).mkdir, parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            "mount", "-t", fstype, "-o", options, source, target,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        level = logging.INFO if proc.returncode == 0 else logging.WARNING
        logger.log(level, "remounted %s at %s: %s", fstype, target, out.decode(errors="replace").strip() or "ok")


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a detached container's init is not our child)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def _wait_pid_gone(pid: int, seconds: float) -> None:
    """Wait until `pid` has exited. A zombie counts as gone: it holds no memory, mounts or namespaces,
    and reaping it is up to init (a detached container's process is not our child)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        await asyncio.sleep(0.02)
    logger.warning("container process %d is still alive", pid)


def _unsupported(feature: str) -> DriverError:
    return DriverError("Unsupported", f"containers do not support {feature}; use a VM workload")
