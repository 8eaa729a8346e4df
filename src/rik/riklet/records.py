"""What the riklet remembers about the instances it runs, on disk, so a restarted riklet can adopt them.

One JSON file per instance, written atomically (temp file + rename + fsync), holding the driver's
opaque state. The record is written before the driver starts anything and removed only after the
driver destroyed everything, so a crash at any point leaves a record that leads to cleanup.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class InstanceRecord:
    id: str
    driver: str
    workload: str
    state: dict[str, Any] = field(default_factory=dict)


class RecordStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, instance_id: str) -> Path:
        return self.directory / f"{instance_id}.json"

    def save(self, record: InstanceRecord) -> None:
        path = self._path(record.id)
        temporary = path.with_suffix(".tmp")
        with temporary.open("w") as handle:
            json.dump(asdict(record), handle)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)

    def remove(self, instance_id: str) -> None:
        self._path(instance_id).unlink(missing_ok=True)

    def load_all(self) -> dict[str, InstanceRecord]:
        records = {}
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                record = InstanceRecord(
                    id=data["id"], driver=data["driver"], workload=data["workload"], state=data.get("state", {})
                )
            except (OSError, ValueError, KeyError):
                continue
            records[record.id] = record
        return records
