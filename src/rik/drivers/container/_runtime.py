"""The OCI runtime binary (runc or crun): how to call it, and which one works on this host.

Detached runs never get pipes: the container inherits the runtime's stdout/stderr and would hold a
pipe open forever, so the caller always passes a log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rik.drivers.container._cgroups import remove_cgroup
from rik.drivers.container._spec import probe_config

logger = logging.getLogger(__name__)

#: crun refuses hybrid cgroup hosts unless the cgroup2 mount is hidden in a private mount namespace.
_CRUN_HYBRID_WRAPPER = (
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$0" "$@"',
)


@dataclass(frozen=True)
class RuntimeResult:
    returncode: int
    output: str


class OCIRuntime:
    """Calls to one runtime binary with one state root."""

    def __init__(self, name: str, root: Path, prefix: tuple[str, ...] = ()) -> None:
        self.name = name
        self.root = root
        self._prefix = prefix

    def argv(self, *args: str) -> list[str]:
        return [*self._prefix, self.name, "--root", str(self.root), *args]

    async def _run(self, *args: str) -> RuntimeResult:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return RuntimeResult(proc.returncode, out.decode(errors="replace"))

    async def run_detached(self, container_id: str, bundle: Path, pid_file: Path, log_file: Path) -> int:
        """`run -d`; the container's (and the runtime's) output goes to `log_file`. Returns the exit code."""
        self.root.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *self.argv("run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file), container_id),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            return await proc.wait()

    async def run_foreground(self, container_id: str, bundle: Path, log_file: Path) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *self.argv("run", "--bundle", str(bundle), container_id),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            return await proc.wait()

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The runtime's `state` document, or None when the container does not exist."""
        result = await self._run("state", container_id)
        if result.returncode != 0:
            return None
        try:
            document: dict[str, Any] = json.loads(result.output)
        except json.JSONDecodeError:
            return None
        return document

    async def kill(self, container_id: str, signal: str) -> bool:
        # --all signals every process of the container, which matters once its init is gone.
        result = await self._run("kill", "--all", container_id, signal)
        return result.returncode == 0

    async def delete(self, container_id: str) -> RuntimeResult:
        return await self._run("delete", "--force", container_id)


def _hybrid_cgroups() -> bool:
    return Path("/sys/fs/cgroup/unified").is_mount() and not Path("/sys/fs/cgroup/cgroup.controllers").exists()


def candidates(root: Path, preferred: str | None = None) -> list[OCIRuntime]:
    """Runtimes to try, best first: runc, then crun (wrapped on hybrid cgroup hosts)."""
    found: list[OCIRuntime] = []
    for name in ("runc", "crun"):
        if preferred not in (None, name) or shutil.which(name) is None:
            continue
        prefix = _CRUN_HYBRID_WRAPPER if name == "crun" and _hybrid_cgroups() else ()
        found.append(OCIRuntime(name, root / name, prefix))
    return found


async def probe_runtime(runtime: OCIRuntime, cgroup_parent: str) -> str | None:
    """Run `/bin/true` in a throw-away container; None if it worked, else what went wrong."""
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="rik-probe-"))
    container_id = f"rik-probe-{work.name.rsplit('-', 1)[-1]}"
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        for name in ("dev", "proc", "sys", "tmp"):  # mount points: the root is read-only
            (rootfs / name).mkdir()
        mounts: list[dict[str, Any]] = []
        # Borrow the host's binaries: a symlink stays a symlink (merged /usr), a directory is bound.
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "usr"):
            host = Path("/") / name
            if host.is_symlink():
                (rootfs / name).symlink_to(host.readlink())
            elif host.is_dir():
                (rootfs / name).mkdir()
                mounts.append(
                    {"destination": f"/{name}", "type": "bind", "source": str(host), "options": ["rbind", "ro"]}
                )
        cgroups_path = f"/{cgroup_parent}/{container_id}"
        config = probe_config(str(rootfs), mounts, cgroups_path)
        (work / "config.json").write_text(json.dumps(config))
        log = work / "probe.log"
        code = await runtime.run_foreground(container_id, work, log)
        if code != 0:
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            return f"{runtime.name}: {lines[-1] if lines else f'exit status {code}'}"
        return None
    finally:
        with contextlib.suppress(Exception):
            await runtime.delete(container_id)
        await asyncio.to_thread(remove_cgroup, f"/{cgroup_parent}/{container_id}")
        await asyncio.to_thread(shutil.rmtree, work, True)
