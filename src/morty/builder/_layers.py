"""Reproducible, uncompressed layer tarballs (root-owned, fixed mtimes) from in-memory files or a directory."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path

EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"  # == EPOCH


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, EPOCH, size, link
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _parents(name: str, seen: set[str]) -> list[str]:
    parts = name.split("/")[:-1]
    out = []
    for i in range(1, len(parts) + 1):
        parent = "/".join(parts[:i])
        if parent not in seen:
            seen.add(parent)
            out.append(parent)
    return out


def write_layer(
    destination: Path,
    *,
    files: Mapping[str, tuple[bytes, int]] | None = None,
    directories: Mapping[str, int] | None = None,
    tree: tuple[Path, str] | None = None,
) -> None:
    """Write a layer to `destination`: `files` (path → (content, mode)), `directories` (path → mode) and the
    contents of `tree` = (host directory, path in the image). Paths are relative to the image root. Regular
    files, directories and symbolic links are copied (anything else is skipped); owners become root."""
    seen: set[str] = set()
    with tarfile.open(destination, "w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(name: str, mode: int) -> None:
            for parent in _parents(name, seen):
                tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
            if name not in seen:
                seen.add(name)
                tar.addfile(_info(name, tarfile.DIRTYPE, mode))

        for name, mode in sorted((directories or {}).items()):
            add_dir(name.strip("/"), mode)
        for name, (data, mode) in sorted((files or {}).items()):
            name = name.strip("/")
            for parent in _parents(name, seen):
                tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
            tar.addfile(_info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
        if tree is not None:
            root, prefix = tree
            prefix = prefix.strip("/")
            add_dir(prefix, 0o755)
            for here, dirnames, filenames in os.walk(root):
                dirnames.sort()
                relative = os.path.relpath(here, root)
                base = prefix if relative == "." else f"{prefix}/{relative}"
                for entry in [*dirnames, *sorted(filenames)]:
                    path = os.path.join(here, entry)
                    st = os.lstat(path)
                    name = f"{base}/{entry}"
                    if stat.S_ISDIR(st.st_mode):
                        seen.add(name)
                        tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
                    elif stat.S_ISLNK(st.st_mode):
                        tar.addfile(_info(name, tarfile.SYMTYPE, 0o777, link=os.readlink(path)))
                    elif stat.S_ISREG(st.st_mode):
                        mode = 0o755 if st.st_mode & 0o111 else 0o644
                        with open(path, "rb") as source:
                            tar.addfile(_info(name, tarfile.REGTYPE, mode, st.st_size), source)
