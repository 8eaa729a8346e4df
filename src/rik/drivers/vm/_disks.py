"""`DiskCache`: ext4 root disks built from unpacked OCI images, one per (digest, size), with LRU eviction.

A disk is built with `mkfs.ext4 -d` from a staging tree (no loop mount): a hard-link copy of the image's
rootfs (files are only ever unlinked there, never written, so the image store's copy is untouched) plus
RIK's guest init under `/.rik/` (busybox, its applets, the init script) and `/etc/hosts`, `/etc/resolv.conf`.
Instances never write to a cached disk: each gets a qcow2 overlay backed by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from rik.drivers.base import DriverError
from rik.drivers.process import resolv_conf
from rik.drivers.vm._assets import guest_script
from rik.images import UnpackedImage
from rik.images._locks import PathLocks

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
_MIN_HEADROOM_MIB = 64
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class DiskCache:
    """Root disks under `directory`, at most `cap_mib` MiB in total (disks in use are never evicted).

    `in_use` returns the disks that instances (or anything else) still use.
    """

    def __init__(
        self,
        directory: Path,
        *,
        cap_mib: int,
        in_use: Callable[[], set[Path]],
        busybox: Path = Path("/bin/busybox"),
    ) -> None:
        self.directory = directory
        self._cap_bytes = cap_mib * MIB
        self._in_use = in_use
        self._busybox = busybox
        self._locks = PathLocks(directory / ".locks")

    def _guest_hash(self) -> str:
        digest = hashlib.sha256(guest_script("init.sh"))
        digest.update(str(self._busybox.stat().st_size).encode())
        return digest.hexdigest()[:8]

    async def disk_for(self, image: UnpackedImage, size_mib: int | None) -> Path:
        """The cached root disk of `image` (built if needed); `size_mib` None means rootfs size + headroom."""
        _, _, value = image.digest.partition(":")
        key = f"{value[:32]}-{size_mib or 'auto'}-{self._guest_hash()}"
        disk = self.directory / f"{key}.ext4"
        async with self._locks.hold(key):
            if disk.is_file():
                await asyncio.to_thread(os.utime, disk)
                return disk
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
            await self._build(image, size_mib, disk)
        await self.evict(keep=frozenset({disk}))
        return disk

    async def _build(self, image: UnpackedImage, size_mib: int | None, disk: Path) -> None:
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".build-", dir=self.directory))
        tmp_disk = staging.with_suffix(".ext4")
        try:
            root = staging / "root"
            await _copy_tree(image.rootfs, root)
            await asyncio.to_thread(self._inject, root)
            content = await asyncio.to_thread(_tree_bytes, root)
            needed = math.ceil(content * 1.25 / MIB) + _MIN_HEADROOM_MIB
            if size_mib is not None and size_mib < needed:
                raise DriverError(
                    "DiskTooSmall", f"disk_size {size_mib} MiB is too small for {image.reference} (≥ {needed} MiB)"
                )
            size = size_mib or needed
            proc = await asyncio.create_subprocess_exec(
                "mkfs.ext4", "-q", "-F", "-m", "0", "-L", "rikroot", "-d", str(root), str(tmp_disk), f"{size}M",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise DriverError("DiskBuildFailed", f"mkfs.ext4 failed: {out.decode(errors='replace').strip()}")
            await asyncio.to_thread(os.chmod, tmp_disk, 0o444)
            await asyncio.to_thread(os.rename, tmp_disk, disk)
            logger.info(
                "built root disk",
                extra={"image": image.reference, "digest": image.digest, "disk": str(disk), "size_mib": size},
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(tmp_disk.unlink)

    def _inject(self, root: Path) -> None:
        """Add RIK's guest init; replace (unlink, then write: files are hard links) /etc/hosts and resolv.conf."""
        rik = root / ".rik"
        if rik.is_symlink() or rik.exists():
            _remove(rik)
        (rik / "bin").mkdir(parents=True)
        shutil.copyfile(self._busybox, rik / "busybox")
        (rik / "busybox").chmod(0o755)
        (rik / "init").write_bytes(guest_script("init.sh"))
        applets = subprocess.run([str(self._busybox), "--list"], capture_output=True, text=True, check=True).stdout
        for applet in applets.split():
            if applet and "/" not in applet and applet != "busybox":
                (rik / "bin" / applet).symlink_to("../busybox")
        for name in ("proc", "sys", "dev", "tmp"):
            path = root / name
            if not path.exists() and not path.is_symlink():
                path.mkdir(mode=0o1777 if name == "tmp" else 0o755)
        etc = root / "etc"
        if etc.is_symlink():
            logger.warning("image /etc is a symlink; not writing hosts/resolv.conf", extra={"root": str(root)})
            return
        etc.mkdir(exist_ok=True)
        for name, text in (("hosts", _HOSTS), ("resolv.conf", resolv_conf())):
            path = etc / name
            if path.is_symlink() or path.exists():
                _remove(path)
            path.write_text(text)

    async def evict(self, keep: frozenset[Path] = frozenset()) -> list[Path]:
        """Delete least recently used disks not in use until the cache fits its cap."""
        in_use = self._in_use() | set(keep)

        def scan() -> list[tuple[float, int, Path]]:
            if not self.directory.is_dir():
                return []
            found = []
            for path in self.directory.glob("*.ext4"):
                with contextlib.suppress(FileNotFoundError):
                    st = path.stat()
                    found.append((st.st_mtime, st.st_blocks * 512, path))
            return sorted(found)

        disks = await asyncio.to_thread(scan)
        total = sum(size for _, size, _ in disks)
        removed: list[Path] = []
        for _, size, path in disks:
            if total <= self._cap_bytes:
                break
            if path in in_use:
                continue
            async with self._locks.hold(path.stem):
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(path.unlink)
            total -= size
            removed.append(path)
        if removed:
            logger.info("evicted root disks", extra={"disks": [str(p) for p in removed], "cache_bytes": total})
        return removed


async def _copy_tree(source: Path, target: Path) -> None:
    """A hard-link copy of `source` (instant, no data copied); a reflink/full copy across file systems."""
    for argv in (["cp", "-al", str(source), str(target)], ["cp", "-a", "--reflink=auto", str(source), str(target)]):
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            return
        logger.info("copy failed, trying the next way", extra={"argv": argv, "output": out.decode(errors="replace")})
        await asyncio.to_thread(shutil.rmtree, target, True)
    raise DriverError("DiskBuildFailed", f"cannot copy {source}")


def _tree_bytes(root: Path) -> int:
    """Bytes the files under `root` occupy (hard links counted once), rounded up to 4 KiB blocks."""
    seen: set[int] = set()
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(directory, name))
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += (st.st_size + 4095) // 4096 * 4096
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
