"""Invocation records arriving while their function is deleted, on PostgreSQL (whose writers run
concurrently; SQLite serialises them). The platform soak found it: one batch holding records of a function
deleted meanwhile failed on the foreign key, and the warm function's records in it were refused too."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text

from morty.api import store
from morty.api.database import Database
from morty.api.models import BatchResult, FunctionCreate, InvocationBatch, InvocationPath, InvocationRecord
from morty.api.tables import InvocationRow
from tests.support.postgres import create_database

pytestmark = pytest.mark.e2e


def _record(record_id: str, function: str) -> InvocationRecord:
    moment = datetime.now(UTC)
    return InvocationRecord(
        id=record_id, function=function, status=200, started_at=moment, finished_at=moment, path=InvocationPath.WARM
    )


async def _until_a_session_waits_for_a_lock(db: Database) -> None:
    async with db.sessions() as watcher:
        for _ in range(500):
            waiting = await watcher.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            )
            if waiting:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the batch never waited for the deleting transaction's lock")


async def test_records_of_a_function_deleted_meanwhile_are_dropped_and_the_rest_stored(postgres: str) -> None:
    db = Database(create_database(postgres, f"test_{uuid.uuid4().hex[:12]}"))
    await db.migrate()
    try:
        async with db.transaction() as session:
            for name in ("gone", "kept"):
                await store.create_function(session, FunctionCreate(name=name, runtime="python3.11"))
        batch = InvocationBatch(records=[_record("r-gone", "gone"), _record("r-kept", "kept")])

        async def record() -> BatchResult:
            async with db.transaction() as session:
                return await store.record_invocations(session, batch)

        async with db.transaction() as deleting:
            await store.delete_function(deleting, "gone")
            recording = asyncio.create_task(record())
            await _until_a_session_waits_for_a_lock(db)
        result = await recording

        assert result == BatchResult(accepted=1, duplicates=0, unknown_functions=["gone"])
        async with db.sessions() as session:
            stored = await session.scalar(select(func.count()).select_from(InvocationRow))
        assert stored == 1
    finally:
        await db.close()
