"""Invocation records: `POST /v1/invocations:batch` (from the gateway) and
`GET /v1/functions/{name}/invocations` (newest first, paginated)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from prometheus_client import Counter

from morty.api import store
from morty.api.models import BatchResult, InvocationBatch, InvocationPage
from morty.api.routes.deps import AUTHENTICATED, Morty, errors

router = APIRouter(prefix="/v1", tags=["invocations"], **AUTHENTICATED)
RECORDS = Counter("morty_invocation_records_total", "Invocation records received", ["result"])


@router.post("/invocations:batch", response_model=BatchResult, responses=errors(422))
async def record_invocations(batch: InvocationBatch, morty: Morty) -> BatchResult:
    """Store a batch of records. Records already stored (same `id`) are counted, not duplicated;
    records of unknown functions are dropped and their functions listed."""
    async with morty.db.transaction() as session:
        result = await store.record_invocations(session, batch)
    if morty.instances is not None:
        await morty.instances.touch_records(batch.records)
    RECORDS.labels("accepted").inc(result.accepted)
    RECORDS.labels("duplicate").inc(result.duplicates)
    RECORDS.labels("dropped").inc(len(batch.records) - result.accepted - result.duplicates)
    return result


@router.get("/functions/{name}/invocations", response_model=InvocationPage, responses=errors(404, 422))
async def list_invocations(
    name: str,
    morty: Morty,
    status: Annotated[
        str | None, Query(pattern=r"^([1-5][0-9]{2}|[1-5]xx)$", description="an HTTP status (503) or class (5xx)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=256, description="`next_cursor` of the previous page")] = None,
) -> InvocationPage:
    async with morty.db.read() as session:
        return await store.list_invocations(session, name, status=status, limit=limit, cursor=cursor)
