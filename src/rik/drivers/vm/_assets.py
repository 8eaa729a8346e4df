"""`GuestAssets`: the node's guest kernel and initramfs, provisioned once from Debian's cloud kernel package.

Layout under the assets directory (shareable by every riklet on a machine)::

    kernel-<version>/vmlinuz                 the kernel, from the package's /boot
    kernel-<version>/initramfs-<hash>.img    busybox + virtio modules + /init (rebuilt when its inputs change)
    current.json                             which of the above to use
    locks/                                   flock files: one riklet provisions, the others wait

The package is only downloaded (`apt-get download`) and unpacked (`dpkg-deb -x`), never installed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rik.drivers.base import DriverError
from rik.drivers.vm import _cpio as cpio
from rik.drivers.vm._commands import run
from rik.drivers.vm._modules import ModuleError, load_order, read_module
from rik.images._locks import PathLocks

logger = logging.getLogger(__name__)

KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: Loaded in this order (dependencies are added): disks, NIC, and the ACPI power button for clean stops.
GUEST_MODULES = [
    "virtio_ring", "virtio", "virtio_mmio", "failover", "net_failover", "virtio_net", "virtio_blk",
    "button", "evdev",
]  # fmt: skip
_INITRAMFS_DIRS = ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sbin", "sys", "usr", "usr/bin")


@dataclass(frozen=True)
class GuestKernel:
    version: str
    kernel: Path
    initramfs: Path


def guest_script(name: str) -> bytes:
    """A script shipped with RIK for the guest (`init.sh`, `initramfs-init.sh`)."""
    return (resources.files("rik.drivers.vm") / "guest" / name).read_bytes()


class GuestAssets:
    """Provides a bootable guest kernel + initramfs; `ensure()` downloads and builds them the first time."""

    def __init__(self, directory: Path, *, package: str = KERNEL_PACKAGE, busybox: Path = Path("/bin/busybox")) -> None:
        self.directory = directory
        self._package = package
        self._busybox = busybox
        self._locks = PathLocks(directory / "locks")
        self._current: GuestKernel | None = None

    async def ensure(self) -> GuestKernel:
        """The provisioned kernel, provisioning it first if needed; raises `DriverError("GuestKernelUnavailable")`."""
        if self._current is not None and self._current.kernel.is_file() and self._current.initramfs.is_file():
            return self._current
        async with self._locks.hold("provision"):
            current = await asyncio.to_thread(self._read_current)
            if current is None:
                current = await self._provision()
            self._current = current
            return current

    def _initramfs_inputs_hash(self) -> str:
        digest = hashlib.sha256(guest_script("initramfs-init.sh"))
        digest.update(",".join(GUEST_MODULES).encode())
        digest.update(str(self._busybox.stat().st_size).encode())
        return digest.hexdigest()[:12]

    def _read_current(self) -> GuestKernel | None:
        try:
            document = json.loads((self.directory / "current.json").read_text())
            kernel = GuestKernel(document["version"], Path(document["kernel"]), Path(document["initramfs"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not kernel.kernel.is_file() or not kernel.initramfs.is_file():
            return None
        if kernel.initramfs.name != f"initramfs-{self._initramfs_inputs_hash()}.img":
            return None
        return kernel

    async def _provision(self) -> GuestKernel:
        if not self._busybox.is_file():
            raise DriverError("GuestKernelUnavailable", f"{self._busybox} is missing: install busybox-static")
        self.directory.mkdir(parents=True, exist_ok=True)
        name = await self._resolve_package()
        logger.info("provisioning the guest kernel", extra={"package": name, "directory": str(self.directory)})
        work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".provision-", dir=self.directory))
        try:
            result = await run(
                "apt-get", "download", "-o", "APT::Sandbox::User=root", name, cwd=work, limit_seconds=600
            )
            debs = sorted(work.glob("*.deb"))
            if not result.ok or not debs:
                raise DriverError("GuestKernelUnavailable", f"cannot download {name}: {result.last_line()}")
            extracted = work / "root"
            result = await run("dpkg-deb", "-x", str(debs[0]), str(extracted))
            if not result.ok:
                raise DriverError("GuestKernelUnavailable", f"cannot unpack {debs[0].name}: {result.last_line()}")
            return await asyncio.to_thread(self._install, extracted)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _resolve_package(self) -> str:
        """The versioned kernel package that the `linux-image-cloud-amd64` metapackage depends on."""
        result = await run("apt-cache", "depends", self._package)
        for line in result.output.splitlines():
            word, _, value = line.strip().partition(":")
            if word == "Depends" and value.strip().startswith("linux-image-"):
                return value.strip()
        raise DriverError(
            "GuestKernelUnavailable",
            f"apt does not know {self._package} ({result.last_line()}); run apt-get update",
        )

    def _install(self, extracted: Path) -> GuestKernel:
        versions = sorted(p.name for p in (extracted / "lib" / "modules").iterdir() if p.is_dir())
        if not versions:
            raise DriverError("GuestKernelUnavailable", "the kernel package holds no modules")
        version = versions[-1]
        modules_dir = extracted / "lib" / "modules" / version
        if shutil.which("depmod"):  # a worker thread: a blocking call is fine
            subprocess.run(["depmod", "-b", str(extracted), version], check=False, capture_output=True)
        target = self.directory / f"kernel-{version}"
        target.mkdir(parents=True, exist_ok=True)
        kernel = target / "vmlinuz"
        shutil.copyfile(extracted / "boot" / f"vmlinuz-{version}", kernel.with_suffix(".tmp"))
        kernel.with_suffix(".tmp").rename(kernel)
        try:
            order = load_order(modules_dir, GUEST_MODULES)
        except ModuleError as exc:
            raise DriverError("GuestKernelUnavailable", str(exc)) from exc
        initramfs = target / f"initramfs-{self._initramfs_inputs_hash()}.img"
        data = self._initramfs(order)
        initramfs.with_suffix(".tmp").write_bytes(data)
        initramfs.with_suffix(".tmp").rename(initramfs)
        current = GuestKernel(version, kernel, initramfs)
        document = {"version": version, "kernel": str(kernel), "initramfs": str(initramfs)}
        (self.directory / "current.json.tmp").write_text(json.dumps(document))
        (self.directory / "current.json.tmp").rename(self.directory / "current.json")
        logger.info(
            "guest kernel provisioned",
            extra={"version": version, "modules": [name for name, _ in order], "initramfs_bytes": len(data)},
        )
        return current

    def _initramfs(self, order: list[tuple[str, Path]]) -> bytes:
        entries = [cpio.directory(d) for d in _INITRAMFS_DIRS]
        entries.append(cpio.char_device("dev/console", 5, 1))
        entries.append(cpio.char_device("dev/null", 1, 3, 0o666))
        entries.append(cpio.file("bin/busybox", self._busybox.read_bytes(), 0o755))
        entries.append(cpio.symlink("bin/sh", "busybox"))
        entries.append(cpio.file("init", guest_script("initramfs-init.sh"), 0o755))
        entries.append(cpio.file("etc/rik-modules", "".join(f"{name}\n" for name, _ in order).encode()))
        entries += [cpio.file(f"lib/modules/{name}.ko", read_module(path)) for name, path in order]
        return cpio.archive(entries)
