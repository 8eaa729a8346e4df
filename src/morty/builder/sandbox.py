"""Run one command in a throw-away container of a base image with runc: how dependencies get installed without
running a package manager (and whatever a package's build runs) on the host.

The base image is unpacked once per base hash (``umoci unpack``, next to its cached layout) and shared read-only
by every sandbox; a run gets its own bundle (a ``config.json`` pointing at that root) with:

- the root file system read-only, a private tmpfs on ``/tmp``, and only the given bind mounts writable;
- the user ``nobody`` (65534), no capabilities, ``noNewPrivileges``;
- its own PID, IPC, UTS and mount namespaces and a cgroup with memory, PID and CPU limits;
- the host's network (a package manager needs its index) and the host's ``/etc/resolv.conf``, read-only;
- a timeout, after which the container is killed.

Caveat: sharing the host's network namespace lets the command reach services listening on the host's loopback.
A dedicated network namespace with NAT to the outside only would close that; it is not done yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from morty.builder._tools import BuildError, LogSink, discard, run
from morty.builder.base import PATH_ENV, TAG, BaseImage, _FileLock

NOBODY = 65534
RUNC_ROOT = Path("/run/morty-builder/runc")
CGROUP_PARENT = "/morty-builds"


@dataclass(frozen=True)
class SandboxLimits:
    memory_mib: int = 1024
    pids: int = 512
    cpu_millicores: int = 2000
    timeout_seconds: float = 600.0


@dataclass(frozen=True)
class Mount:
    source: Path
    destination: str
    readonly: bool = True


@dataclass
class Sandbox:
    image: BaseImage
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    runc: str = "runc"

    @property
    def _unpacked(self) -> Path:
        return self.image.layout.parent / "bundle"

    async def _rootfs(self, log: LogSink) -> tuple[Path, dict[str, Any]]:
        """The shared, unpacked base image (unpacking it first if needed) and umoci's runtime config for it."""
        done = self._unpacked.parent / "unpacked"
        if not done.is_file():
            async with _FileLock(self._unpacked.parent / ".unpack.lock"):
                if not done.is_file():
                    await log("sandbox: unpacking the base image\n")
                    shutil.rmtree(self._unpacked, ignore_errors=True)
                    ref = f"{self.image.layout}:{TAG}"
                    await run(["umoci", "unpack", "--image", ref, str(self._unpacked)], discard, what="umoci unpack")
                    done.write_text("")
        template: dict[str, Any] = json.loads((self._unpacked / "config.json").read_text())
        return self._unpacked / "rootfs", template

    def config(
        self,
        template: dict[str, Any],
        rootfs: Path,
        *,
        args: list[str],
        env: dict[str, str],
        cwd: str,
        mounts: list[Mount],
        cgroups_path: str,
    ) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(json.dumps(template))
        config["root"] = {"path": str(rootfs), "readonly": True}
        config["hostname"] = "morty-build"
        process = config.setdefault("process", {})
        process.update(
            terminal=False,
            args=args,
            env=[f"{key}={value}" for key, value in {"PATH": PATH_ENV, "HOME": "/tmp", **env}.items()],
            cwd=cwd,
            user={"uid": NOBODY, "gid": NOBODY},
            noNewPrivileges=True,
            capabilities={key: [] for key in ("bounding", "effective", "inheritable", "permitted", "ambient")},
        )
        process.pop("consoleSize", None)
        base_mounts = [m for m in config.get("mounts", []) if m.get("destination") not in ("/tmp", "/etc/resolv.conf")]
        base_mounts.append(
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1g"]}
        )
        resolv = Path("/etc/resolv.conf").resolve()
        if resolv.is_file():
            base_mounts.append(
                {"destination": "/etc/resolv.conf", "type": "bind", "source": str(resolv), "options": ["rbind", "ro"]}
            )
        for mount in mounts:
            options = ["rbind", "nosuid", "nodev", "ro" if mount.readonly else "rw"]
            base_mounts.append(
                {"destination": mount.destination, "type": "bind", "source": str(mount.source), "options": options}
            )
        config["mounts"] = base_mounts
        linux = config.setdefault("linux", {})
        linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
        linux["cgroupsPath"] = cgroups_path
        period = 100_000
        linux.setdefault("resources", {}).update(
            memory={"limit": self.limits.memory_mib * 1024 * 1024},
            pids={"limit": self.limits.pids},
            cpu={"quota": max(1000, self.limits.cpu_millicores * period // 1000), "period": period},
        )
        linux.pop("uidMappings", None)
        linux.pop("gidMappings", None)
        return config

    async def run(
        self,
        workdir: Path,
        args: list[str],
        log: LogSink,
        *,
        env: dict[str, str] | None = None,
        cwd: str = "/",
        mounts: list[Mount] | None = None,
        what: str = "sandboxed command",
    ) -> None:
        """Run `args` in a fresh container; its output goes to `log`. Raises `BuildError` if it fails or times
        out. `workdir` (an empty, private directory) holds the bundle and is left for the caller to remove."""
        rootfs, template = await self._rootfs(log)
        container = f"morty-build-{uuid.uuid4().hex[:16]}"
        bundle = workdir / "bundle"
        bundle.mkdir(parents=True)
        config = self.config(
            template,
            rootfs,
            args=args,
            env=env or {},
            cwd=cwd,
            mounts=mounts or [],
            cgroups_path=f"{CGROUP_PARENT}/{container}",
        )
        (bundle / "config.json").write_text(json.dumps(config))
        RUNC_ROOT.mkdir(parents=True, exist_ok=True)
        base = [self.runc, "--root", str(RUNC_ROOT)]

        async def kill() -> None:
            await _quiet([*base, "kill", container, "KILL"])

        try:
            await run(
                [*base, "run", "--bundle", str(bundle), container],
                log,
                what=what,
                timeout=self.limits.timeout_seconds,
                on_timeout=kill,
            )
        except BuildError as exc:
            if "(exit 137)" in exc.message:
                raise BuildError(
                    f"{exc.message}\n(killed: out of memory? the limit is {self.limits.memory_mib} MiB)"
                ) from None
            raise
        finally:
            await asyncio.shield(_quiet([*base, "delete", "--force", container]))


async def _quiet(argv: list[str]) -> None:
    with contextlib.suppress(Exception):
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(proc.wait(), 30)
