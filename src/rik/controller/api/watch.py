"""`/api/v1/watch`: the change feed as a stream of JSON lines.

Each line is a `WatchEvent`; a `BOOKMARK` line carrying the latest resource version is sent when the
feed is quiet, so a client always knows where to resume. Resuming from a version older than the
retained history answers 410, and the client lists again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from prometheus_client import Gauge

from rik.controller import store
from rik.controller.api.deps import ControllerState, state
from rik.controller.errors import Invalid
from rik.model import ErrorBody, Resource

router = APIRouter(prefix="/api/v1", tags=["watch"])
Controller = Annotated[ControllerState, Depends(state)]
WATCHERS = Gauge("rik_controller_watchers", "Open watch streams")

BOOKMARK_EVERY = 10.0
POLL_EVERY = 1.0
"""Other controllers sharing the database write too; their changes are seen within this delay."""


def _resources(value: str | None) -> set[Resource]:
    if not value:
        return set(Resource)
    try:
        return {Resource(part.strip()) for part in value.split(",") if part.strip()}
    except ValueError as exc:
        raise Invalid(
            f"resources: {exc}; expected a comma-separated subset of workloads,instances,nodes,snapshots"
        ) from exc


@router.get(
    "/watch",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/x-ndjson": {}}},
        410: {"model": ErrorBody},
        422: {"model": ErrorBody},
    },
)
async def watch(
    controller: Controller,
    since: Annotated[int | None, Query(ge=0, description="resource version to resume after")] = None,
    resources: Annotated[str | None, Query(max_length=64, description="e.g. instances,nodes")] = None,
    node: Annotated[str | None, Query(max_length=64)] = None,
    workload: Annotated[str | None, Query(max_length=64)] = None,
) -> StreamingResponse:
    wanted = _resources(resources)
    db = controller.db
    async with db.read() as session:
        start = await store.current_resource_version(session) if since is None else since
        # Fail now, with a status code, rather than in the middle of the stream.
        first = await store.events_since(session, start, resources=wanted, node=node, workload=workload)

    async def stream() -> AsyncIterator[bytes]:
        WATCHERS.inc()
        try:
            cursor = start
            pending = first
            quiet_since = asyncio.get_running_loop().time()
            while True:
                if pending:
                    lines = []
                    for event in pending:
                        lines.append(_line(event.type, event.resource, event.resource_version, event.object))
                        cursor = event.resource_version
                    yield b"".join(lines)
                    quiet_since = asyncio.get_running_loop().time()
                signal = db.change_signal()
                async with db.read() as session:
                    # Read the counter first: every event up to a committed counter value is committed.
                    latest = await store.current_resource_version(session)
                    pending = await store.events_since(session, cursor, resources=wanted, node=node, workload=workload)
                if not pending and asyncio.get_running_loop().time() - quiet_since > BOOKMARK_EVERY:
                    cursor = max(cursor, latest)
                    yield _line("BOOKMARK", "", cursor, {})
                    quiet_since = asyncio.get_running_loop().time()
                if not pending:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(signal.wait(), timeout=POLL_EVERY)
        finally:
            WATCHERS.dec()

    return StreamingResponse(stream(), media_type="application/x-ndjson")


def _line(type_: str, resource: str, rv: int, obj: dict[str, Any]) -> bytes:
    payload = {"type": type_, "resource": resource, "resource_version": rv, "object": obj}
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"
