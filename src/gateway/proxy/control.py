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

import httpx

from gateway.proxy.config import Config

log = logging.getLogger(__name__)
REPORT_INTERVAL_S = 1.0
# Acks of applied changes are coalesced over this window so 100 changes/s cost ~10 reports, not 100.
REPORT_DEBOUNCE_S = 0.1


class ControlClient:
    def __init__(self, admin_url: str, token: str, worker_id: str) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.worker_id = worker_id
        self.http = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"}, timeout=httpx.Timeout(10, connect=5)
        )
        self.synced = asyncio.Event()
        self._report_now = asyncio.Event()

    async def close(self) -> None:
        await self.http.aclose()

    async def follow(self, config: Config) -> None:
        """Apply the change stream forever, reconnecting (and resuming from the applied version) on errors."""
        backoff = 0.1
        while True:
            params = {"since": str(config.resource_version)} if self.synced.is_set() else {}
            try:
                async with self.http.stream(
                    "GET", f"{self.admin_url}/v1/watch", params=params, timeout=httpx.Timeout(30, connect=5)
                ) as response:
                    response.raise_for_status()
                    snapshot: list[dict[str, Any]] | None = None
                    async for line in response.aiter_lines():
                        if not line:
                            continue
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
            except (httpx.HTTPError, json.JSONDecodeError, KeyError) as exc:
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
                await self.http.post(f"{self.admin_url}/internal/report", json=body)
            except httpx.HTTPError as exc:
                log.debug("report failed", extra={"error": repr(exc)})

    async def provision(self, route: str, timeout_s: float) -> tuple[bool, str]:
        try:
            response = await self.http.post(
                f"{self.admin_url}/internal/provision", json={"route": route}, timeout=timeout_s + 5
            )
        except httpx.HTTPError as exc:
            return False, f"management process unreachable ({exc.__class__.__name__})"
        if response.status_code == 200:
            return True, ""
        try:
            message = str(response.json().get("detail", response.text))
        except ValueError:
            message = response.text
        return False, message[:200]
