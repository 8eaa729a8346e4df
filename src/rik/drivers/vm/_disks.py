"""`DiskCache`: ext4 root disks built from unpacked OCI images, one per (digest, size), with LRU eviction.

A disk is built with `mkfs.ext4 -d` from a staging tree (no loop mount): a hard-link copy of the image's
rootfs (files are only ever unlinked there, never written, so the image store's copy is untouched) plus
RIK's guest init under `/.rik/` (busybox, its applets, the init script) and `/etc/hosts`, `/etc/resolv.conf`.
Instances never write to a cached disk: each gets a qcow2 overlay backed by it.

The cache also holds *raw disks*, the compatibility form of a VM image: `file:///path/disk.ext4` (or
`.img`/`.raw`) or `.qcow2`, or the same as an `http(s)://` URL. Such a disk is a root file system, not a
bootable machine: it is fetched once (a local file is re-imported when its size or mtime changes), a
qcow2 is converted to raw (one with a backing file is refused: it would read host files), the ext4 file
system is checked (`e2fsck -p`), grown to `disk_size` (or by the same headroom as image disks) and given
RIK's guest init under `/.rik/` with `debugfs` (no mount), so it boots exactly like an OCI image: the
node's kernel and initramfs, RIK's init, the instance's network, and `spec.command`/`args` as the
process (a raw disk has no image config, hence no entrypoint and no image env).
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
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import httpx

from rik.diskusage import tree_bytes
from rik.drivers.base import DriverError
from rik.drivers.process import resolv_conf
from rik.drivers.vm._assets import guest_script
from rik.drivers.vm._commands import run
from rik.images import UnpackedImage
from rik.images._locks import PathLocks

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
_MIN_HEADROOM_MIB = 64
_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
#: Schemes of the raw-disk form of a VM image, and the disk formats known by file name.
DISK_URL_SCHEMES = ("file://", "http://", "https://")
_DISK_FORMATS = {".ext4": "raw", ".img": "raw", ".raw": "raw", ".qcow2": "qcow2"}
_EXT4_MAGIC_OFFSET, _EXT4_MAGIC = 1080, b"\x53\xef"
_QCOW2_MAGIC = b"QFI\xfb"
_DOWNLOAD_LIMIT = 64 * 1024 * MIB


def is_disk_url(image: str) -> bool:
    """True for the raw-disk form of a VM image (`file://`, `http://`, `https://`)."""
    return image.startswith(DISK_URL_SCHEMES)


def disk_url_format(url: str) -> str:
    """ "raw" or "qcow2", from the URL's file name; `DriverError("ImagePullFailed")` for anything else."""
    path = urllib.parse.urlsplit(url).path
    suffix = Path(path).suffix.lower()
    if suffix not in _DISK_FORMATS:
        known = ", ".join(sorted(_DISK_FORMATS))
        raise DriverError("ImagePullFailed", f"{url}: a raw disk image must end in one of {known}")
    return _DISK_FORMATS[suffix]


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

    async def raw_disk(self, url: str, size_mib: int | None) -> Path:
        """The cached, bootable copy of the raw disk at `url` (see the module docstring)."""
        fmt = disk_url_format(url)
        identity = url
        source: Path | None = None
        if url.startswith("file://"):
            parts = urllib.parse.urlsplit(url)
            source = Path(urllib.parse.unquote(parts.path))
            if parts.netloc not in ("", "localhost") or not source.is_absolute():
                raise DriverError("ImagePullFailed", f"{url}: expected file:///absolute/path")
            try:
                st = await asyncio.to_thread(source.stat)
            except OSError as exc:
                raise DriverError("ImagePullFailed", f"{url}: {exc.strerror or exc}") from exc
            identity = f"{url}\0{st.st_size}\0{st.st_mtime_ns}"
        key = f"raw-{hashlib.sha256(identity.encode()).hexdigest()[:32]}-{size_mib or 'auto'}-{self._guest_hash()}"
        disk = self.directory / f"{key}.ext4"
        async with self._locks.hold(key):
            if disk.is_file():
                await asyncio.to_thread(os.utime, disk)
                return disk
            await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
            staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".import-", dir=self.directory))
            try:
                if source is None:
                    source = staging / f"download{Path(urllib.parse.urlsplit(url).path).suffix}"
                    await _download(url, source)
                work = staging / "disk.ext4"
                await self._import_raw(url, source, fmt, work, size_mib)
                await asyncio.to_thread(os.chmod, work, 0o444)
                await asyncio.to_thread(os.rename, work, disk)
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)
        logger.info("imported raw disk", extra={"url": url, "disk": str(disk)})
        await self.evict(keep=frozenset({disk}))
        return disk

    async def _import_raw(self, url: str, source: Path, fmt: str, work: Path, size_mib: int | None) -> None:
        head = await asyncio.to_thread(_read_head, source, _EXT4_MAGIC_OFFSET + 2)
        if fmt == "qcow2":
            if not head.startswith(_QCOW2_MAGIC):
                raise DriverError("DiskInvalid", f"{url} is not a qcow2 image")
            info = await _checked("DiskInvalid", f"{url}: qemu-img info", "qemu-img", "info", "--output=json",
                                  "-f", "qcow2", str(source))  # fmt: skip
            if '"backing-filename"' in info:
                raise DriverError("DiskInvalid", f"{url}: a qcow2 image with a backing file is not accepted")
            await _checked("DiskInvalid", f"{url}: qemu-img convert", "qemu-img", "convert", "-f", "qcow2",
                           "-O", "raw", str(source), str(work))  # fmt: skip
            head = await asyncio.to_thread(_read_head, work, _EXT4_MAGIC_OFFSET + 2)
        else:
            await _checked("DiskBuildFailed", f"cannot copy {url}", "cp", "--reflink=auto", "--sparse=always",
                           str(source), str(work))  # fmt: skip
        if head[_EXT4_MAGIC_OFFSET : _EXT4_MAGIC_OFFSET + 2] != _EXT4_MAGIC:
            raise DriverError("DiskInvalid", f"{url} does not hold an ext4 file system")
        # -p repairs what is safe to repair and exits 4 (or more) on anything else.
        result = await run("e2fsck", "-f", "-p", str(work))
        if result.returncode not in (0, 1):
            output = result.output.replace(f"{work}: ", "").replace(str(work), "the disk")
            found = " ".join(line.strip() for line in output.splitlines() if line.strip())
            raise DriverError("DiskCorrupt", f"{url}: e2fsck found a damaged ext4 file system: {found[:600]}")
        size = (await asyncio.to_thread(os.stat, work)).st_size
        wanted = size + _MIN_HEADROOM_MIB * MIB if size_mib is None else size_mib * MIB
        if wanted < size:
            raise DriverError("DiskTooSmall", f"disk_size {size_mib} MiB is smaller than {url} ({size // MIB} MiB)")
        if wanted > size:
            await asyncio.to_thread(os.truncate, work, wanted)
            await _checked("DiskBuildFailed", f"{url}: resize2fs", "resize2fs", str(work))
        await self._inject_with_debugfs(url, work)

    async def _inject_with_debugfs(self, url: str, disk: Path) -> None:
        """RIK's guest init into the disk's /.rik, as `_inject` does for image disks, without mounting it."""
        existing = await run("debugfs", "-R", "stat /.rik", str(disk))
        if "Inode:" in existing.output:
            raise DriverError("DiskInvalid", f"{url} already has a /.rik directory (RIK's place for its init)")
        with tempfile.TemporaryDirectory(prefix="rik-inject-") as tmp:
            init = Path(tmp) / "init"
            await asyncio.to_thread(init.write_bytes, guest_script("init.sh"))
            applets = (await _checked("DiskBuildFailed", "busybox --list", str(self._busybox), "--list")).split()
            commands = [
                "mkdir /.rik", "mkdir /.rik/bin",
                f"write {self._busybox} /.rik/busybox", "sif /.rik/busybox mode 0100755",
                f"write {init} /.rik/init", "sif /.rik/init mode 0100755",
            ]  # fmt: skip
            commands += [f"symlink /.rik/bin/{a} ../busybox" for a in applets if a and "/" not in a and a != "busybox"]
            script = Path(tmp) / "commands"
            await asyncio.to_thread(script.write_text, "\n".join(commands) + "\n")
            await _checked("DiskBuildFailed", f"{url}: debugfs", "debugfs", "-w", "-f", str(script), str(disk))
        check = await run("debugfs", "-R", "stat /.rik/init", str(disk))
        if "Inode:" not in check.output:
            raise DriverError("DiskBuildFailed", f"{url}: cannot add RIK's guest init: {check.describe()}")

    async def _build(self, image: UnpackedImage, size_mib: int | None, disk: Path) -> None:
        staging = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".build-", dir=self.directory))
        tmp_disk = staging.with_suffix(".ext4")
        try:
            root = staging / "root"
            await _copy_tree(image.rootfs, root)
            await asyncio.to_thread(self._inject, root)
            content = await asyncio.to_thread(tree_bytes, root)
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


async def _download(url: str, target: Path) -> None:
    """GET `url` into `target`, at most `_DOWNLOAD_LIMIT` bytes (the environment's proxy settings apply)."""
    try:
        timeout = httpx.Timeout(30.0, read=300.0)
        async with (
            httpx.AsyncClient(follow_redirects=True, timeout=timeout) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise DriverError("ImagePullFailed", f"{url}: HTTP {response.status_code}")
            written = 0
            with target.open("wb") as output:
                async for chunk in response.aiter_bytes(1 << 20):
                    written += len(chunk)
                    if written > _DOWNLOAD_LIMIT:
                        raise DriverError("ImagePullFailed", f"{url} is larger than {_DOWNLOAD_LIMIT // MIB} MiB")
                    await asyncio.to_thread(output.write, chunk)
    except httpx.HTTPError as exc:
        raise DriverError("ImagePullFailed", f"cannot download {url}: {exc}") from exc


async def _checked(reason: str, what: str, *argv: str) -> str:
    result = await run(*argv)
    if not result.ok:
        raise DriverError(reason, f"{what} failed: {result.describe()}")
    return result.output


def _read_head(path: Path, count: int) -> bytes:
    with path.open("rb") as data:
        return data.read(count)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
