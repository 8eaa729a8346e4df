"""Invocation records: built when an exchange ends, buffered (bounded: overflow is dropped and counted),
and shipped in batches to the configured sinks by a background task, never on the request's path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from contextlib import suppress
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import httpx

from gateway.proxy.stats import Stats

log = logging.getLogger(__name__)

# perf_counter() readings become wall-clock times through one offset taken at start.
_WALL_OFFSET = time.time() - perf_counter()


def iso(moment: float) -> str:
    return datetime.fromtimestamp(moment + _WALL_OFFSET, UTC).isoformat().replace("+00:00", "Z")


class RecordShipper:
    def __init__(
        self,
        sinks: list[str],
        token: str | None,
        stats: Stats,
        *,
        batch_size: int = 500,
        interval_s: float = 1.0,
        capacity: int = 10_000,
    ) -> None:
        self.sinks = sinks
        self.enabled = bool(sinks)
        self.token = token
        self.stats = stats
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.buffer: deque[dict[str, Any]] = deque()
        self.capacity = capacity
        self._wake = asyncio.Event()

    def add(self, record: dict[str, Any]) -> None:
        if len(self.buffer) >= self.capacity:
            self.stats.records_dropped += 1
            return
        self.buffer.append(record)
        if len(self.buffer) >= self.batch_size:
            self._wake.set()

    async def run(self) -> None:
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            while True:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.interval_s)
                self._wake.clear()
                while self.buffer:
                    count = min(len(self.buffer), self.batch_size)
                    batch = [_finalise(self.buffer.popleft()) for _ in range(count)]
                    await self._ship(client, batch)
                    if len(self.buffer) < self.batch_size:
                        break

    async def flush(self) -> None:
        """Ship what is buffered (at shutdown)."""
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        async with httpx.AsyncClient(timeout=5, headers=headers) as client:
            while self.buffer:
                count = min(len(self.buffer), self.batch_size)
                await self._ship(client, [_finalise(self.buffer.popleft()) for _ in range(count)])

    async def _ship(self, client: httpx.AsyncClient, batch: list[dict[str, Any]]) -> None:
        for sink in self.sinks:
            try:
                response = await client.post(sink, json={"records": batch})
                response.raise_for_status()
                self.stats.records_sent += len(batch)
            except httpx.HTTPError as exc:
                self.stats.records_dropped += len(batch)
                log.warning("record sink failed", extra={"sink": sink, "records": len(batch), "error": str(exc)})


def _finalise(record: dict[str, Any]) -> dict[str, Any]:
    record["started_at"] = iso(record["started_at"])
    record["finished_at"] = iso(record["finished_at"])
    return record
