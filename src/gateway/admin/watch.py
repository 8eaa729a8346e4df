"""The change stream: NDJSON lines, one event each, resumable from a resource version.

    {"type": "reset", "resource_version": N}           a full snapshot follows (no `since`, or too old)
    {"type": "put", "kind": "route"|"service"|"target", "name": ..., "spec": {...}, "resource_version": N}
    {"type": "delete", "kind": ..., "name": ..., "spec": null, "resource_version": N}
    {"type": "synced", "resource_version": N}          the reader is now up to date
    {"type": "heartbeat", "resource_version": N}       every 10 s while nothing changes

Changes written by this process wake the stream at once; changes written by another replica sharing the
database are picked up within `POLL_S`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

from gateway.store.database import GatewayDatabase

POLL_S = 0.5
HEARTBEAT_S = 10.0


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def change_stream(db: GatewayDatabase, since: int | None) -> AsyncIterator[bytes]:
    changes = await db.changes_since(since) if since is not None else None
    if changes is None:
        current, objects = await db.snapshot()
        yield _line({"type": "reset", "resource_version": current})
        for stored in objects:
            yield _line(
                {
                    "type": "put",
                    "kind": stored["kind"],
                    "name": stored["name"],
                    "spec": stored["spec"],
                    "resource_version": stored["resource_version"],
                }
            )
    else:
        assert since is not None
        current = since
        for change in changes:
            yield _line(change)
            current = change["resource_version"]
    yield _line({"type": "synced", "resource_version": current})
    last_sent = monotonic()
    while True:
        signal = db.change_signal()
        changes = await db.changes_since(current)
        if changes is None:
            # Fell behind the retained feed: start over with a snapshot.
            async for line in change_stream(db, None):
                yield line
            return
        for change in changes:
            yield _line(change)
            current = change["resource_version"]
        if changes:
            last_sent = monotonic()
            if len(changes) >= 1000:
                continue  # a full page: more are waiting
        # The signal was taken before the read: a change committed since then has already set it.
        try:
            await asyncio.wait_for(signal.wait(), POLL_S)
        except TimeoutError:
            if monotonic() - last_sent > HEARTBEAT_S:
                yield _line({"type": "heartbeat", "resource_version": current})
                last_sent = monotonic()
