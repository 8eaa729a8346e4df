"""Captured runtime output: parsing the invocation framing, the in-memory ring and the JSON-lines log file.

A record, as kept in the ring, written to ``MORTY_LOG_FILE`` and served by ``GET /logs``, is one JSON object::

    {"seq": 42, "ts": 1764290000.123456, "stream": "stdout", "invocation": "4f1c...", "line": "text"}

``seq`` increases by one per record from 1 (per alpha process), ``ts`` is the Unix time alpha read the line,
``stream`` is ``stdout``/``stderr`` (the runtime's) or ``alpha`` (alpha's own events: start, exit, restart, give-up),
``invocation`` the invocation id from the runtime's framing or ``null``.

The framing a runtime writes to attribute a line to an invocation (``morty/runtimes/python/server.py``)::

    \\x1eMORTY <invocation-id> <stdout|stderr>\\x1f<line>\\n
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import IO

FRAME_START = "\x1eMORTY "
FRAME_SEPARATOR = "\x1f"
STREAMS = frozenset({"stdout", "stderr"})


@dataclass(frozen=True, slots=True)
class LogRecord:
    seq: int
    ts: float
    stream: str
    invocation: str | None
    line: str

    def to_json(self) -> str:
        record = {"seq": self.seq, "ts": self.ts, "stream": self.stream, "invocation": self.invocation}
        record["line"] = self.line
        return json.dumps(record, ensure_ascii=False)


def parse_line(text: str, stream: str) -> tuple[str, str | None, str]:
    """``(stream, invocation, line)`` of one line read from the runtime's ``stream``, framing removed."""
    if text.startswith(FRAME_START):
        header, separator, line = text[len(FRAME_START) :].partition(FRAME_SEPARATOR)
        invocation, _, framed_stream = header.partition(" ")
        if separator and invocation and framed_stream in STREAMS:
            return framed_stream, invocation, line
    return stream, None, text


class LogStore:
    """The last ``capacity`` records in memory, every record appended to ``path`` (when given)."""

    def __init__(self, capacity: int, path: str | None = None) -> None:
        self._ring: deque[LogRecord] = deque(maxlen=capacity)
        self._seq = 0
        self._file: IO[str] | None = None
        if path:
            self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed by close())

    def append(self, stream: str, line: str, invocation: str | None = None) -> LogRecord:
        self._seq += 1
        record = LogRecord(self._seq, time.time(), stream, invocation, line)
        self._ring.append(record)
        if self._file is not None:
            try:
                self._file.write(record.to_json() + "\n")
            except OSError as exc:  # a full disk must not stop the function: keep the ring, say so once
                sys.stderr.write(f"alpha: log file disabled: {exc}\n")
                self._file = None
        return record

    def query(
        self, invocation: str | None = None, since: float | None = None, after: int | None = None, limit: int = 1000
    ) -> list[LogRecord]:
        """Matching records, oldest first: the first ``limit`` after ``since``/``after`` when one is given (paging
        forward), else the last ``limit`` (a tail)."""
        matches = [
            record
            for record in self._ring
            if (invocation is None or record.invocation == invocation)
            and (since is None or record.ts >= since)
            and (after is None or record.seq > after)
        ]
        if since is not None or after is not None:
            return matches[:limit]
        return matches[-limit:] if limit else []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
