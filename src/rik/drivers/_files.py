"""File helpers every driver uses for its per-instance state directories and logs."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def read_tail(path: Path, tail_bytes: int | None) -> bytes:
    """The last `tail_bytes` of a file (all of it for None); nothing if it does not exist yet."""
    try:
        with path.open("rb") as log:
            if tail_bytes is not None:
                size = os.fstat(log.fileno()).st_size
                log.seek(max(0, size - tail_bytes))
            return log.read()
    except FileNotFoundError:
        return b""


def recorded_instance_ids(instances_dir: Path) -> list[str]:
    """The ids recorded in `<instances_dir>/*/instance.json`: what a driver created and has not removed,
    found again after a restart. A half-written or foreign directory is skipped."""
    if not instances_dir.is_dir():
        return []
    found = []
    for directory in instances_dir.iterdir():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            found.append(str(json.loads((directory / "instance.json").read_text())["id"]))
    return sorted(found)
