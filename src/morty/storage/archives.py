"""Validation and safe extraction of function code archives: zip, tar and tar.gz.

Every archive is checked whole before anything is written:
  - its size (`max_archive_bytes`), and that it really is a zip or a (gzipped) tar;
  - every entry's path: relative, no `..` component, no backslash, drive letter or NUL, bounded length;
  - entry types: regular files, directories and links only (no devices, FIFOs, sockets, sparse files);
  - no entry inside a path that is a file or a symbolic link in the archive, no duplicate entries;
  - symbolic links: relative targets that, resolved through the archive's other links, stay in the tree;
    hard links: only to a regular file that comes earlier in the archive (extracted as a copy);
  - bounded file count (`max_files`) and total expanded size (`max_expanded_bytes`): bombs stop at the
    first entry over a limit, and a gzip stream is never decompressed past the limit either.

`extract_archive` writes into an existing, empty directory only: directories, then files (created
exclusively, never through a link, modes reduced to 0644/0755), then links last, so nothing is ever
written through a link. If anything fails, the directory is emptied again and `ArchiveError` says why.
"""

from __future__ import annotations

import enum
import gzip
import io
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

MiB = 1024 * 1024
_COPY_CHUNK = 1024 * 1024
_MAX_LINK_HOPS = 40
_DRIVE = re.compile(r"[A-Za-z]:")


class ArchiveError(Exception):
    """The archive is rejected; `message` says which entry and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ArchiveLimits:
    max_archive_bytes: int = 100 * MiB
    max_files: int = 10_000
    max_expanded_bytes: int = 512 * MiB
    max_path_length: int = 1024

    def __post_init__(self) -> None:
        if not 0 < self.max_files < 0xFFFF:
            raise ValueError("max_files must be between 1 and 65534")


class Kind(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True)
class Entry:
    path: str
    kind: Kind
    size: int = 0
    executable: bool = False
    target: str | None = None


@dataclass(frozen=True)
class ArchiveSummary:
    format: str
    entries: tuple[Entry, ...]

    @property
    def files(self) -> int:
        return sum(1 for e in self.entries if e.kind in (Kind.FILE, Kind.HARDLINK))

    @property
    def expanded_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def paths(self) -> set[str]:
        return {e.path for e in self.entries}


# Public API --------------------------------------------------------------------------------------------


def inspect_archive(path: Path, limits: ArchiveLimits | None = None) -> ArchiveSummary:
    """Validate the archive at `path` without writing anything; raises `ArchiveError`."""
    limits = limits or ArchiveLimits()
    fmt = detect_format(path, limits)
    plan = _Plan(limits)
    if fmt == "zip":
        with _open_zip(path, limits) as archive:
            for info in archive.infolist():
                plan.add(*_zip_entry(archive, info))
    else:
        with _open_tar(path, fmt, limits) as archive:
            for member in _tar_iter(archive):
                plan.add(*_tar_entry(member))
    plan.check_links()
    return ArchiveSummary(format=fmt, entries=tuple(plan.entries.values()))


def extract_archive(path: Path, destination: Path, limits: ArchiveLimits | None = None) -> ArchiveSummary:
    """Validate the archive, then extract it into `destination`, which must be an existing empty
    directory. On any failure `destination` is left empty and `ArchiveError` is raised."""
    limits = limits or ArchiveLimits()
    if destination.is_symlink() or not destination.is_dir():
        raise ArchiveError(f"extraction target {destination} is not a directory")
    if any(destination.iterdir()):
        raise ArchiveError(f"extraction target {destination} is not empty")
    summary = inspect_archive(path, limits)
    try:
        _Writer(destination, summary, limits).run(path)
    except BaseException:
        _empty(destination)
        raise
    return summary


def detect_format(path: Path, limits: ArchiveLimits) -> str:
    size = path.stat().st_size
    if size > limits.max_archive_bytes:
        raise ArchiveError(f"archive is {size} bytes; the limit is {limits.max_archive_bytes} bytes")
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"
    raise ArchiveError("not a zip, tar or tar.gz archive")


# Paths and the plan -------------------------------------------------------------------------------------


def _normalise(name: str, limits: ArchiveLimits) -> str:
    shown = name[:200]
    if "\x00" in name:
        raise ArchiveError(f"entry {shown!r}: NUL character in path")
    if "\\" in name:
        raise ArchiveError(f"entry {shown!r}: backslash in path")
    if name.startswith("/") or _DRIVE.match(name):
        raise ArchiveError(f"entry {shown!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"entry {shown!r}: '..' in path")
    normal = "/".join(parts)
    if len(normal) > limits.max_path_length or any(len(part.encode()) > 255 for part in parts):
        raise ArchiveError(f"entry {shown!r}: path too long")
    return normal


class _Plan:
    """The validated entries, in archive order, checked as they are added."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.entries: dict[str, Entry] = {}
        self.implied_dirs: set[str] = set()
        self.expanded = 0

    def add(self, name: str, kind: Kind, size: int, executable: bool, target: str | None) -> None:
        path = _normalise(name, self.limits)
        if not path:
            if kind is Kind.DIRECTORY:
                return
            raise ArchiveError(f"entry {name!r}: empty path")
        if len(self.entries) >= self.limits.max_files:
            raise ArchiveError(f"archive has more than {self.limits.max_files} entries")
        if kind in (Kind.FILE, Kind.HARDLINK):
            if kind is Kind.HARDLINK:
                target = self._hardlink_target(path, target or "")
                size = self.entries[target].size
            self.expanded += size
            if self.expanded > self.limits.max_expanded_bytes:
                raise ArchiveError(f"archive expands to more than {self.limits.max_expanded_bytes} bytes")
        existing = self.entries.get(path)
        if existing is not None:
            if existing.kind is Kind.DIRECTORY and kind is Kind.DIRECTORY:
                return
            raise ArchiveError(f"entry {path!r}: appears twice in the archive")
        if kind is not Kind.DIRECTORY and path in self.implied_dirs:
            raise ArchiveError(f"entry {path!r}: is a {kind} but other entries are inside it")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            above = self.entries.get(parent)
            if above is not None and above.kind is not Kind.DIRECTORY:
                raise ArchiveError(f"entry {path!r}: is inside {parent!r}, which is a {above.kind}")
            self.implied_dirs.add(parent)
        if kind is Kind.SYMLINK:
            target = self._symlink_target(path, target or "")
        self.entries[path] = Entry(path=path, kind=kind, size=size, executable=executable, target=target)

    def _hardlink_target(self, path: str, target: str) -> str:
        try:
            normal = _normalise(target, self.limits) if target else ""
        except ArchiveError:
            raise ArchiveError(f"entry {path!r}: hard link to {target[:200]!r}, which is outside the archive") from None
        linked = self.entries.get(normal)
        if linked is None or linked.kind is not Kind.FILE:
            raise ArchiveError(
                f"entry {path!r}: hard link to {target!r}, which is not a regular file earlier in the archive"
            )
        return normal

    def _symlink_target(self, path: str, target: str) -> str:
        if not target or "\x00" in target or len(target) > self.limits.max_path_length:
            raise ArchiveError(f"entry {path!r}: invalid symbolic link target")
        if target.startswith("/") or "\\" in target or _DRIVE.match(target):
            raise ArchiveError(f"entry {path!r}: symbolic link to the absolute path {target[:200]!r}")
        return target

    def check_links(self) -> None:
        """Resolve every symbolic link through the archive's links: none may leave the tree."""
        links = {e.path: e.target or "" for e in self.entries.values() if e.kind is Kind.SYMLINK}
        for path, target in links.items():
            start = path.split("/")[:-1]
            if _resolve(start, target.split("/"), links) is None:
                raise ArchiveError(f"entry {path!r}: symbolic link to {target[:200]!r} points outside the archive")


def _resolve(base: list[str], parts: list[str], links: dict[str, str]) -> list[str] | None:
    """Resolve `parts` from directory `base` inside the tree, following the archive's links; None
    when the path climbs out of the tree (or loops)."""
    resolved = list(base)
    pending = list(parts)
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        candidate = "/".join([*resolved, part])
        if candidate in links:
            hops += 1
            if hops > _MAX_LINK_HOPS:
                return None
            pending = links[candidate].split("/") + pending
            continue
        resolved.append(part)
    return resolved


# Zip ------------------------------------------------------------------------------------------------------


def _open_zip(path: Path, limits: ArchiveLimits) -> zipfile.ZipFile:
    # Count entries from the end-of-central-directory record before zipfile parses the whole
    # directory into memory: a small archive can declare millions of entries.
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (0xFFFF + 22)))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise ArchiveError("corrupt zip archive: no end of central directory")
    declared = int.from_bytes(tail[at + 10 : at + 12], "little")
    if declared > limits.max_files:
        raise ArchiveError(f"archive has more than {limits.max_files} entries")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ArchiveError(f"corrupt zip archive: {exc}") from None


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, Kind, int, bool, str | None]:
    if info.flag_bits & 0x1:
        raise ArchiveError(f"entry {info.filename[:200]!r}: encrypted entries are not supported")
    mode = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = stat.S_IFMT(mode)
    if info.is_dir() or kind == stat.S_IFDIR:
        return info.filename, Kind.DIRECTORY, 0, False, None
    if kind == stat.S_IFLNK:
        if info.file_size > 4096:
            raise ArchiveError(f"entry {info.filename[:200]!r}: symbolic link target too long")
        try:
            target = archive.read(info).decode()
        except (zipfile.BadZipFile, UnicodeDecodeError, OSError, ValueError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"entry {info.filename[:200]!r}: unreadable symbolic link: {exc}") from None
        return info.filename, Kind.SYMLINK, 0, False, target
    if kind not in (0, stat.S_IFREG):
        raise ArchiveError(f"entry {info.filename[:200]!r}: {_special(kind)} entries are not allowed")
    return info.filename, Kind.FILE, info.file_size, bool(mode & 0o111), None


def _special(kind: int) -> str:
    names = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO"}
    return names.get(kind, "socket" if kind == stat.S_IFSOCK else "special file")


# Tar ------------------------------------------------------------------------------------------------------


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to deliver more than `limit` bytes: the decompressed tar
    stream is never inflated past what the limits allow, headers included."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.seen = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self.inner.read(len(view))
        self.seen += len(data)
        if self.seen > self.limit:
            raise ArchiveError(f"archive expands to more than {self.limit} bytes")
        view[: len(data)] = data
        return len(data)


class _TarHandle:
    def __init__(self, path: Path, fmt: str, limits: ArchiveLimits) -> None:
        self.raw = path.open("rb")
        inner: IO[bytes] = self.raw
        if fmt == "tar.gz":
            inner = gzip.GzipFile(fileobj=self.raw, mode="rb")  # type: ignore[assignment]
        # Headers (including long-name and pax records) need room beyond the file data.
        budget = limits.max_expanded_bytes + (limits.max_files + 16) * 3 * 512 + 4 * MiB
        self.stream = io.BufferedReader(_Bounded(inner, budget), buffer_size=64 * 1024)
        try:
            self.tar = tarfile.open(fileobj=self.stream, mode="r|")  # noqa: SIM115 - closed by __exit__
        except BaseException as exc:
            self.raw.close()
            if isinstance(exc, ArchiveError):
                raise
            if isinstance(exc, tarfile.TarError | OSError | EOFError | zlib.error | ValueError):
                raise ArchiveError(f"corrupt {fmt} archive: {exc}") from None
            raise

    def __enter__(self) -> tarfile.TarFile:
        return self.tar

    def __exit__(self, *_exc: object) -> None:
        self.tar.close()
        self.raw.close()


def _open_tar(path: Path, fmt: str, limits: ArchiveLimits) -> _TarHandle:
    return _TarHandle(path, fmt, limits)


def _tar_iter(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = archive.next()
        except ArchiveError:
            raise
        except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exc:
            raise ArchiveError(f"corrupt tar archive: {exc}") from None
        if member is None:
            return
        yield member


def _tar_entry(member: tarfile.TarInfo) -> tuple[str, Kind, int, bool, str | None]:
    name = member.name
    if member.issparse():
        raise ArchiveError(f"entry {name[:200]!r}: sparse files are not allowed")
    if member.isdir():
        return name, Kind.DIRECTORY, 0, False, None
    if member.isreg():
        return name, Kind.FILE, member.size, bool(member.mode & 0o111), None
    if member.issym():
        return name, Kind.SYMLINK, 0, False, member.linkname
    if member.islnk():
        return name, Kind.HARDLINK, 0, False, member.linkname
    if member.ischr():
        raise ArchiveError(f"entry {name[:200]!r}: character device entries are not allowed")
    if member.isblk():
        raise ArchiveError(f"entry {name[:200]!r}: block device entries are not allowed")
    if member.isfifo():
        raise ArchiveError(f"entry {name[:200]!r}: FIFO entries are not allowed")
    raise ArchiveError(f"entry {name[:200]!r}: unsupported entry type {member.type!r}")


# Extraction -----------------------------------------------------------------------------------------------


class _Writer:
    def __init__(self, root: Path, summary: ArchiveSummary, limits: ArchiveLimits) -> None:
        self.root = root
        self.summary = summary
        self.limits = limits
        self.entries = {e.path: e for e in summary.entries}
        self.written = 0

    def run(self, path: Path) -> None:
        for entry in self.summary.entries:
            if entry.kind is Kind.DIRECTORY:
                (self.root / entry.path).mkdir(parents=True, exist_ok=True, mode=0o755)
        if self.summary.format == "zip":
            with _open_zip(path, self.limits) as archive:
                for info in archive.infolist():
                    planned = self._planned(info.filename)
                    if planned is not None and planned.kind is Kind.FILE:
                        entry = planned
                        try:
                            with archive.open(info) as source:
                                self._write_file(entry, source)
                        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError) as exc:
                            raise ArchiveError(f"entry {entry.path!r}: corrupt data: {exc}") from None
        else:
            with _open_tar(path, self.summary.format, self.limits) as archive:
                for member in _tar_iter(archive):
                    planned = self._planned(member.name)
                    if planned is not None and planned.kind is Kind.FILE:
                        data = archive.extractfile(member)
                        if data is None:
                            raise ArchiveError(f"entry {planned.path!r}: no data")
                        try:
                            self._write_file(planned, data)
                        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                            raise ArchiveError(f"entry {planned.path!r}: corrupt data: {exc}") from None
        for entry in self.summary.entries:
            if entry.kind is Kind.HARDLINK and entry.target is not None:
                with (self.root / entry.target).open("rb") as source:
                    self._write_file(entry, source)
        for entry in self.summary.entries:
            if entry.kind is Kind.SYMLINK and entry.target is not None:
                link = self.root / entry.path
                link.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                os.symlink(entry.target, link)
        self._verify_links()

    def _planned(self, name: str) -> Entry | None:
        path = _normalise(name, self.limits)
        return self.entries.get(path) if path else None

    def _write_file(self, entry: Entry, source: IO[bytes]) -> None:
        target = self.root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(target, flags, 0o755 if entry.executable else 0o644)
        size = 0
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                size += len(chunk)
                self.written += len(chunk)
                if size > entry.size or self.written > self.limits.max_expanded_bytes:
                    raise ArchiveError(f"entry {entry.path!r}: holds more data than it declares")
                out.write(chunk)
        if size != entry.size:
            raise ArchiveError(f"entry {entry.path!r}: truncated ({size} of {entry.size} bytes)")

    def _verify_links(self) -> None:
        """Defence in depth: the file system's own resolution of every link stays in the tree."""
        root = os.path.realpath(self.root)
        for entry in self.summary.entries:
            if entry.kind is Kind.SYMLINK:
                resolved = os.path.realpath(self.root / entry.path)
                if resolved != root and not resolved.startswith(root + os.sep):
                    raise ArchiveError(f"entry {entry.path!r}: symbolic link points outside the archive")


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
