"""`/v1/functions/{name}/logs`: what the function's instances printed, by invocation or instance."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from morty.api import store
from morty.api.models import LogList
from morty.api.routes.deps import AUTHENTICATED, Morty, errors

router = APIRouter(prefix="/v1/functions/{name}", tags=["logs"], **AUTHENTICATED)
Limit = Annotated[int, Query(ge=1, le=10_000, description="the last N lines")]


@router.get("/logs", response_model=LogList, responses=errors(404, 422))
async def function_logs(
    name: str,
    morty: Morty,
    invocation: Annotated[str | None, Query(max_length=128)] = None,
    instance: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[AwareDatetime | None, Query(description="ISO 8601 with a time zone")] = None,
    limit: Limit = 1000,
) -> LogList:
    """Lines are collected from running instances when asked for, and from every instance before it stops."""
    return await _logs(morty, name, invocation=invocation, instance=instance, since=since, limit=limit)


@router.get("/invocations/{invocation_id}/logs", response_model=LogList, responses=errors(404, 422))
async def invocation_logs(name: str, invocation_id: str, morty: Morty, limit: Limit = 1000) -> LogList:
    return await _logs(morty, name, invocation=invocation_id[:128], limit=limit)


async def _logs(
    morty: Morty,
    name: str,
    *,
    invocation: str | None = None,
    instance: str | None = None,
    since: datetime | None = None,
    limit: int,
) -> LogList:
    if morty.logs is None:
        async with morty.db.read() as session:
            await store.function_row(session, name)
        return LogList(items=[])
    return LogList(
        items=await morty.logs.query(name, invocation=invocation, instance=instance, since=since, limit=limit)
    )
