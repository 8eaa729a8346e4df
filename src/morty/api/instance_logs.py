"""`InstanceLogs`: what function instances printed, collected from each instance's alpha into the database.

alpha keeps a ring of captured lines, each numbered (`seq`) and, where the runtime framed it, attributed to an
invocation. Morty pulls the lines it has not collected yet (`GET /logs?after=<seq>` on alpha's control port):
when someone asks for a function's logs, and always just before an instance is stopped, so an invocation's
logs outlive its instance. Secret values of the function are masked before anything is stored.

Lines printed by an instance that crashes or is lost before the next collection are lost with it (alpha keeps
them in memory and in the instance's own disk only).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
from prometheus_client import Counter
from sqlalchemy import select, update

from morty.api import store
from morty.api.database import Database
from morty.api.keys import SecretBox
from morty.api.models import LogLine
from morty.api.tables import FunctionRow, InstanceRow, LogRow

log = logging.getLogger(__name__)
COLLECTED = Counter("morty_log_lines_collected_total", "Log lines collected from instances")
PAGE = 1000
MAX_PAGES = 50
"""At most this many pages per instance and collection, so one chatty instance cannot stall a request."""


def _mask(line: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        line = line.replace(secret, "****")
    return line


class InstanceLogs:
    def __init__(self, db: Database, box: SecretBox, *, timeout: float = 5.0) -> None:
        self._db, self._box = db, box
        self._http = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def collect(self, instance_id: str) -> int:
        """Pull the instance's new lines into the database; returns how many. Never raises for an instance
        that does not answer (it may be stopping): its lines stay where they are."""
        async with self._db.read() as session:
            row = await session.get(InstanceRow, instance_id)
            function = await session.get(FunctionRow, row.function_id) if row is not None else None
            if row is None or function is None or row.control_host is None or row.control_port is None:
                return 0
            secrets = sorted(
                (v for v in (await store.secret_values(session, self._box, function.name)).values() if len(v) >= 4),
                key=len,
                reverse=True,
            )
        base = f"http://{row.control_host}:{row.control_port}/logs"
        after, total = row.logs_seq, 0
        for _ in range(MAX_PAGES):
            try:
                response = await self._http.get(base, params={"after": after, "limit": PAGE})
                response.raise_for_status()
            except httpx.HTTPError as exc:
                log.info("could not collect logs: %s", exc, extra={"instance": instance_id})
                break
            records = [json.loads(line) for line in response.text.splitlines() if line.strip()]
            if not records:
                break
            rows = [
                LogRow(
                    function_id=row.function_id,
                    instance=instance_id,
                    invocation=record.get("invocation"),
                    ts=datetime.fromtimestamp(float(record["ts"]), UTC),
                    stream=str(record.get("stream", "stdout"))[:16],
                    line=_mask(str(record.get("line", "")), secrets),
                )
                for record in records
            ]
            after = max(int(record["seq"]) for record in records)
            async with self._db.transaction() as session:
                current = await session.get(InstanceRow, instance_id, with_for_update=True)
                if current is None or current.logs_seq >= after:
                    break  # stopped and collected meanwhile, or collected by a concurrent call
                session.add_all(rows)
                await session.execute(update(InstanceRow).where(InstanceRow.id == instance_id).values(logs_seq=after))
            total += len(rows)
            if len(records) < PAGE:
                break
        COLLECTED.inc(total)
        return total

    async def collect_function(self, function_id: str) -> None:
        async with self._db.read() as session:
            ids = (await session.scalars(select(InstanceRow.id).where(InstanceRow.function_id == function_id))).all()
        for instance_id in ids:
            await self.collect(instance_id)

    async def query(
        self,
        name: str,
        *,
        invocation: str | None = None,
        instance: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[LogLine]:
        """The function's lines, oldest first (the last `limit` of them), after collecting what is new."""
        async with self._db.read() as session:
            function = await store.function_row(session, name)
        await self.collect_function(function.id)
        query = select(LogRow).where(LogRow.function_id == function.id)
        if invocation is not None:
            query = query.where(LogRow.invocation == invocation)
        if instance is not None:
            query = query.where(LogRow.instance == instance)
        if since is not None:
            query = query.where(LogRow.ts >= since)
        async with self._db.read() as session:
            rows = (await session.scalars(query.order_by(LogRow.ts.desc(), LogRow.seq.desc()).limit(limit))).all()
        return [
            LogLine(ts=store.aware(r.ts), instance=r.instance, invocation=r.invocation, stream=r.stream, line=r.line)
            for r in reversed(rows)
        ]
