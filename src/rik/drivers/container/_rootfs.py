"""Per-instance root filesystems: an overlay of the cached image rootfs with a private upper layer."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from rik.drivers.process import resolv_conf

logger = logging.getLogger(__name__)


class MountError(Exception):
    pass


def write_network_files(upper: Path, lower: Path, hostname: str, address: str) -> None:
    """Write /etc/hosts, /etc/hostname and /etc/resolv.conf into the upper layer.

    Name lookups of the container's own hostname must answer at once (Python's http.server calls
    `getfqdn()` when it binds and stalls ~10 s without an answer). Loopback resolvers of the host
    (systemd-resolved's 127.0.0.53) are unreachable from the container and are left out.
    """
    if (lower / "etc").is_symlink():
        logger.warning("image /etc is a symlink; not writing hosts/resolv.conf", extra={"lower": str(lower)})
        return
    etc = upper / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hostname").write_text(f"{hostname}\n")
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
    (etc / "resolv.conf").write_text(resolv_conf())


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts if len(line.split()) > 1)


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace").strip()


async def mount_overlay(lower: Path, upper: Path, work: Path, target: Path) -> None:
    for path in (lower, upper, work, target):
        if any(c in str(path) for c in ",:\\"):
            raise MountError(f"path {path} cannot be used in overlay options")
    if is_mounted(target):
        return
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    code, out = await _run("mount", "-t", "overlay", "overlay", "-o", options, str(target))
    if code != 0:
        raise MountError(f"cannot mount the root filesystem: {out}")


async def unmount(target: Path) -> None:
    """Unmount `target` if mounted; lazily when something still holds it."""
    if not is_mounted(target):
        return
    code, out = await _run("umount", str(target))
    if code != 0:
        logger.warning("umount %s failed (%s); detaching lazily", target, out)
        await _run("umount", "--lazy", str(target))
