"""The fault tests' measured figures, for the benchmark report.

With PLATFORM_RECORD=1, each test that passes merges its figures into a JSON file (PLATFORM_RECORD_FILE,
default docs/benchmarks/faults.json), which `python -m bench.report` renders as its "Fault tests" section.
Without it nothing is written, so CI runs leave the tree clean. The file:

    {"tests": {"<key>": {"title": str, "form": "quick" | "full", "date": "YYYY-MM-DD HH:MM" (UTC),
                         "figures": {"<label>": number | str | [{"<column>": value, ...}, ...] (a table)}}}}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORD_ENV = "PLATFORM_RECORD"
FILE_ENV = "PLATFORM_RECORD_FILE"
DEFAULT_FILE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "faults.json"


def recording() -> bool:
    value = os.environ.get(RECORD_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{RECORD_ENV} must be 1 (record the fault tests' figures) or 0/unset, not {value!r}")
    return value == "1"


def record(key: str, title: str, *, full: bool, figures: Mapping[str, Any]) -> None:
    """Store `figures` as test `key`'s (replacing an earlier run's) if recording; else do nothing."""
    if not recording():
        return
    path = Path(os.environ.get(FILE_ENV) or DEFAULT_FILE)
    stored: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    stored.setdefault("tests", {})[key] = {
        "title": title,
        "form": "full" if full else "quick",
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "figures": dict(figures),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(stored, indent=2) + "\n")
    partial.rename(path)


def share(ok: int, total: int) -> str:
    """`ok` of `total` as a percentage with the counts, e.g. "99.95 % (1999/2000)"."""
    return f"{100 * ok / total:.2f} % ({ok}/{total})" if total else "no requests"
