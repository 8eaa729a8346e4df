"""The worker's line to the management process: it follows the change stream (`/v1/watch`), reports its
applied resource version, in-flight counts and counters (`/internal/report`), and asks for provisioning
(`/internal/provision`), which the management process deduplicates across workers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from gateway.proxy._wire import ManagementClient, WireError
from gateway.proxy.config import Config

log = logging.getLogger(__name__)
REPORT_INTERVAL_S = 1.0
# Acks of applied changes are coalesced over this window so 100 changes/s cost ~10 reports, not 100.
REPORT_DEBOUNCE_S = 0.1


class ControlClient:
    def __init__(self, admin_url: str, token: str, worker_id: str) -> None:
        self.worker_id = worker_id
        self.wire = ManagementClient(admin_url, token)
        self.synced = asyncio.Event()
        self._report_now = asyncio.Event()

    async def close(self) -> None:
        self.wire.kept.close()

    async def follow(self, config: Config) -> None:
        """Apply the change stream forever, reconnecting (and resuming from the applied version) on errors."""
        backoff = 0.1
        while True:
            target = f"/v1/watch?since={config.resource_version}" if self.synced.is_set() else "/v1/watch"
            try:
                snapshot: list[dict[str, Any]] | None = None
                async for line in self.wire.lines(target):
                    event = json.loads(line)
                    kind = event["type"]
                    if kind == "reset":
                        snapshot = []
                    elif kind == "synced":
                        if snapshot is not None:
                            config.replace(snapshot, int(event["resource_version"]))
                            snapshot = None
                        self.synced.set()
                        self._report_now.set()
                        backoff = 0.1
                    elif kind in ("put", "delete"):
                        if snapshot is not None:
                            snapshot.append(event)
                        else:
                            config.apply(event)
                            self._report_now.set()
            except (OSError, WireError, ValueError, KeyError) as exc:
                log.warning("change stream interrupted", extra={"error": repr(exc), "worker": self.worker_id})
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def report(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        while True:
            try:
                await asyncio.wait_for(self._report_now.wait(), REPORT_INTERVAL_S)
                await asyncio.sleep(REPORT_DEBOUNCE_S)
            except TimeoutError:
                pass
            self._report_now.clear()
            body = {"worker": self.worker_id, "pid": os.getpid(), "ready": self.synced.is_set(), **snapshot()}
            try:
                await asyncio.wait_for(self.wire.kept.post_json("/internal/report", body), 10)
            except (OSError, WireError, TimeoutError) as exc:
                log.debug("report failed", extra={"error": repr(exc)})

    async def provision(self, route: str, timeout_s: float) -> tuple[bool, str]:
        try:
            status, body = await asyncio.wait_for(
                self.wire.post_json("/internal/provision", {"route": route}), timeout_s + 5
            )
        except (OSError, WireError, TimeoutError) as exc:
            return False, f"management process unreachable ({exc.__class__.__name__})"
        if status == 200:
            return True, ""
        message = body.get("detail", "") if isinstance(body, dict) else str(body)
        return False, str(message)[:200] or f"status {status}"
