"""Write initramfs archives: cpio "newc" format, gzip-compressed, built in memory (no staging directory)."""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink (`data` is the target) or a device."""

    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(name: str, perm: int = 0o755) -> Entry:
    return Entry(name, stat.S_IFDIR | perm)


def file(name: str, data: bytes, perm: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(inode: int, entry: Entry) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        inode, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
    )  # fmt: skip
    header = b"070701" + b"".join(f"{value:08x}".encode() for value in fields)
    return header + name + _pad(len(header) + len(name)) + entry.data + _pad(len(entry.data))


def archive(entries: list[Entry]) -> bytes:
    """The gzip-compressed newc archive of `entries` (parents must come before their children)."""
    body = b"".join(_member(index + 1, entry) for index, entry in enumerate(entries))
    body += _member(0, Entry(_TRAILER, 0))
    body += _pad(len(body)) + b"\0" * (-len(body) % 512)
    return gzip.compress(body, compresslevel=6, mtime=0)
