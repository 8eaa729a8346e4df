"""How much disk a tree of files takes, measured one way for every cache and report on a node."""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 4096


def file_bytes(st: os.stat_result) -> int:
    """The bytes one file or directory entry takes, its size rounded up to whole 4 KiB blocks."""
    return (st.st_size + BLOCK - 1) // BLOCK * BLOCK


def tree_bytes(root: Path) -> int:
    """Bytes the entries under `root` occupy (hard links counted once), rounded up to 4 KiB blocks.

    A missing `root` (or one removed meanwhile) counts what was found, possibly 0: callers measure caches
    whose entries other tasks may delete.
    """
    seen: set[int] = set()
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += file_bytes(st)
    return total
