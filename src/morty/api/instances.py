"""`Instances`: the function instances Morty runs through the orchestrator, and their scaling.

- `provision(function, ref)` brings one instance of the version `ref` resolves to up, ready (restored from
  the version's snapshot for VMs), within `max_instances`, and records it.
- `stop(function, id)` removes exactly that instance: first every `before_stop` hook runs (the gateway
  drains it there), then the orchestrator deletes it, then its record goes.
- `touch({id: at})` marks instances active (invocation records call it); a background loop stops instances
  idle longer than their function's `idle_timeout`, keeping `min_instances` of them, and brings functions
  below `min_instances` back up to it.
- `reconcile()` (at start and periodically) makes the records match what the orchestrator runs: instances
  started by a process that stopped before recording them are adopted (and age out when idle); records of
  instances that no longer run are dropped (`after_gone` hooks: the gateway forgets their address); an
  instance the orchestrator moved to another node (its node was lost) gets its new address (`after_move`).
  So a restart mid-provisioning loses nothing and leaks nothing, and a lost node's instances keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import delete, func, select, update

from morty.api import store
from morty.api.database import Database
from morty.api.errors import Busy, Conflict, MortyError, NotFound, Unavailable
from morty.api.models import Instance, InvocationRecord, StartPath, VersionStatus
from morty.api.tables import FunctionRow, InstanceRow, VersionRow
from morty.orchestrators.base import Orchestrator, OrchestratorError, OrchestratorUnavailable

log = logging.getLogger(__name__)
PROVISIONS = Counter("morty_instance_provisions_total", "Instances asked for", ["result", "path"])
PROVISION_SECONDS = Histogram(
    "morty_instance_provision_seconds",
    "From the request to a ready instance",
    ["path"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
)
STOPS = Counter("morty_instance_stops_total", "Instances stopped", ["reason"])
RUNNING = Gauge("morty_instances", "Instances Morty runs")


@dataclass(frozen=True)
class Placed:
    """An instance as hooks see it: its function, its version's deployment key, and where it serves."""

    function: str
    key: str
    instance_id: str
    host: str
    port: int
    start_path: str


Hook = Callable[[Placed], Awaitable[None]]
MoveHook = Callable[[Placed, Placed], Awaitable[None]]
Load = Callable[[], Awaitable[dict[str, int]]]
"""In-flight requests per instance address (`host:port`), e.g. from the gateway."""


@dataclass(frozen=True)
class ScalingSettings:
    provision_timeout: float = 120.0
    tick: float = 1.0
    """How often idle instances and `min_instances` are checked."""
    reconcile_interval: float = 2.0
    """How often records are matched with what the orchestrator runs: bounds how long a moved instance's old
    address stays a target."""


def _instance(function: str, version: str, row: InstanceRow, idle_timeout: int) -> Instance:
    return Instance(
        id=row.id,
        function=function,
        version=version,
        url=f"http://{row.host}:{row.port}",
        host=row.host,
        port=row.port,
        start_path=StartPath(row.start_path),
        provision_ms=row.provision_ms,
        started_at=store.aware(row.started_at),
        last_active_at=store.aware(row.last_active_at),
        idle_timeout_seconds=idle_timeout,
    )


class Instances:
    def __init__(self, db: Database, orchestrator: Orchestrator, settings: ScalingSettings | None = None) -> None:
        self._db, self._orchestrator = db, orchestrator
        self.settings = settings or ScalingSettings()
        self.after_start: list[Hook] = []
        """Run once an instance is ready and recorded (the gateway registers it as a target)."""
        self.before_stop: list[Hook] = []
        """Run before an instance is stopped (the gateway drains it; its logs are collected)."""
        self.after_gone: list[Hook] = []
        """Run after the record of an instance that no longer runs is dropped."""
        self.after_move: list[MoveHook] = []
        """Run with (before, after) when an instance now serves at another address."""
        self.load: Load | None = None
        self._pending: defaultdict[str, int] = defaultdict(int)
        """Provisions under way per function, counted against `max_instances`."""
        self._limits = asyncio.Lock()
        self._stopping: set[str] = set()
        self.deploying: Collection[str] = frozenset()
        """Deployment keys being deployed (the deployer's set): their snapshot instances are not adopted."""
        self._loop_task: asyncio.Task[None] | None = None

    # Asked for -------------------------------------------------------------------------------------------------

    async def provision(self, name: str, ref: str = "latest") -> Instance:
        async with self._db.read() as session:
            resolved = await store.resolve(session, f"{name}@{ref}" if ref else name)
            function = await store.function_row(session, name)
            version = await store.version_row(session, function, resolved.version)
        if version.status != VersionStatus.READY.value or version.deployment_key is None:
            raise Conflict(
                f"version {version.version} of {name!r} is {version.status}, not deployed; "
                "an instance needs a ready version"
            )
        async with self._limits:
            async with self._db.read() as session:
                running = await session.scalar(
                    select(func.count()).select_from(InstanceRow).where(InstanceRow.function_id == function.id)
                )
            if (running or 0) + self._pending[function.id] >= function.max_instances:
                raise Busy(f"function {name!r} already runs max_instances={function.max_instances} instances")
            self._pending[function.id] += 1
        # Counted as pending until the instance is recorded (or has failed): the reconcile must not adopt an
        # instance that runs but is not recorded yet.
        key = version.deployment_key
        try:
            row = await self._start_and_record(name, function, version, key)
        finally:
            self._pending[function.id] -= 1
        RUNNING.inc()
        await self._run_hooks(self.after_start, Placed(name, key, row.id, row.host, row.port, row.start_path))
        log.info(
            "instance ready",
            extra={"function": name, "version": version.version, "instance": row.id, "path": row.start_path,
                   "provision_ms": row.provision_ms},
        )  # fmt: skip
        return _instance(name, version.version, row, function.idle_timeout_seconds)

    async def _start_and_record(self, name: str, function: FunctionRow, version: VersionRow, key: str) -> InstanceRow:
        started = time.perf_counter()
        try:
            endpoint = await self._orchestrator.start_instance(key, within=self.settings.provision_timeout)
        except OrchestratorUnavailable as exc:
            PROVISIONS.labels("unavailable", "").inc()
            raise Unavailable(f"the orchestrator is unavailable: {exc.message}") from None
        except OrchestratorError as exc:
            PROVISIONS.labels("failed", "").inc()
            raise Unavailable(f"no instance of {name} {version.version}: {exc.reason}: {exc.message}") from None
        elapsed = time.perf_counter() - started
        PROVISIONS.labels("ready", endpoint.path.value).inc()
        PROVISION_SECONDS.labels(endpoint.path.value).observe(elapsed)
        stamp = store.now()
        row = InstanceRow(
            id=endpoint.instance_id,
            function_id=function.id,
            version_id=version.id,
            host=endpoint.host,
            port=endpoint.port,
            start_path=endpoint.path.value,
            control_host=endpoint.control[0] if endpoint.control else None,
            control_port=endpoint.control[1] if endpoint.control else None,
            provision_ms=round(elapsed * 1000, 3),
            started_at=stamp,
            last_active_at=stamp,
        )
        try:
            async with self._db.transaction() as session:
                if await session.get(FunctionRow, function.id) is None:
                    raise NotFound(f"function {name!r} was deleted while its instance started")
                await session.merge(row)
        except MortyError:
            await self._orchestrator.stop_instance(key, endpoint.instance_id)
            raise
        return row

    async def of_function(self, name: str) -> list[Instance]:
        async with self._db.read() as session:
            function = await store.function_row(session, name)
            rows = await session.execute(
                select(InstanceRow, VersionRow.version)
                .join(VersionRow, VersionRow.id == InstanceRow.version_id)
                .where(InstanceRow.function_id == function.id)
                .order_by(InstanceRow.started_at)
            )
            return [_instance(name, version, row, function.idle_timeout_seconds) for row, version in rows]

    async def stop(self, name: str, instance_id: str, *, reason: str = "requested") -> None:
        async with self._db.read() as session:
            function = await store.function_row(session, name)
            found = (
                await session.execute(
                    select(InstanceRow, VersionRow.deployment_key)
                    .join(VersionRow, VersionRow.id == InstanceRow.version_id)
                    .where(InstanceRow.id == instance_id[:128], InstanceRow.function_id == function.id)
                )
            ).first()
        if found is None:
            raise NotFound(f"function {name!r} has no instance {instance_id[:80]!r}")
        row, key = found
        await self._stop(name, row.id, key, reason)

    async def _stop(self, name: str, instance_id: str, key: str | None, reason: str) -> None:
        self._stopping.add(instance_id)
        try:
            await self._stop_now(name, instance_id, key, reason)
        finally:
            self._stopping.discard(instance_id)

    async def _stop_now(self, name: str, instance_id: str, key: str | None, reason: str) -> None:
        async with self._db.read() as session:
            row = await session.get(InstanceRow, instance_id)
        if row is not None and key is not None:
            await self._run_hooks(self.before_stop, Placed(name, key, row.id, row.host, row.port, row.start_path))
        if key is not None:
            try:
                await self._orchestrator.stop_instance(key, instance_id)
            except OrchestratorError as exc:
                raise Unavailable(f"could not stop instance {instance_id}: {exc.reason}: {exc.message}") from None
        async with self._db.transaction() as session:
            deleted = await session.execute(delete(InstanceRow).where(InstanceRow.id == instance_id))
        if deleted.rowcount:  # type: ignore[attr-defined]
            RUNNING.dec()
        STOPS.labels(reason).inc()
        log.info("instance stopped", extra={"function": name, "instance": instance_id, "reason": reason})

    async def _run_hooks(self, hooks: list[Hook], placed: Placed) -> None:
        for hook in hooks:
            try:
                await hook(placed)
            except Exception as exc:
                log.warning("an instance hook failed: %s", exc, extra={"instance": placed.instance_id})

    async def touch_records(self, records: Iterable[InvocationRecord]) -> None:
        """The instances that served `records` were active until the latest of their finish times."""
        activity: dict[str, datetime] = {}
        for record in records:
            if record.instance and activity.get(record.instance, record.finished_at) <= record.finished_at:
                activity[record.instance] = record.finished_at
        await self.touch(activity)

    async def touch(self, activity: dict[str, datetime]) -> None:
        """Instances were active at the given times (the latest per instance)."""
        if not activity:
            return
        async with self._db.transaction() as session:
            for instance_id, at in activity.items():
                await session.execute(
                    update(InstanceRow)
                    .where(InstanceRow.id == instance_id, InstanceRow.last_active_at < at)
                    .values(last_active_at=at)
                )

    async def stop_version(self, version_id: str) -> None:
        """Every instance of one version (its configuration changes)."""
        async with self._db.read() as session:
            rows = (
                await session.execute(
                    select(InstanceRow.id, VersionRow.deployment_key, FunctionRow.name)
                    .join(VersionRow, VersionRow.id == InstanceRow.version_id)
                    .join(FunctionRow, FunctionRow.id == InstanceRow.function_id)
                    .where(InstanceRow.version_id == version_id)
                )
            ).all()
        for instance_id, key, name in rows:
            await self._stop(name, instance_id, key, "reconfigured")

    async def stop_all(self, function_id: str, name: str) -> None:
        """Every instance of a function (it is being deleted)."""
        async with self._db.read() as session:
            rows = (
                await session.execute(
                    select(InstanceRow.id, VersionRow.deployment_key)
                    .join(VersionRow, VersionRow.id == InstanceRow.version_id)
                    .where(InstanceRow.function_id == function_id)
                )
            ).all()
        for instance_id, key in rows:
            await self._stop(name, instance_id, key, "function deleted")

    # In the background -----------------------------------------------------------------------------------------

    async def _function_names(self) -> list[tuple[str, str]]:
        async with self._db.read() as session:
            return [(i, n) for i, n in await session.execute(select(FunctionRow.id, FunctionRow.name))]

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="instances")

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def _loop(self) -> None:
        last_reconcile = -float("inf")
        while True:
            try:
                if time.monotonic() - last_reconcile >= self.settings.reconcile_interval:
                    await self.reconcile()
                    last_reconcile = time.monotonic()
                await self.scale_once()
            except asyncio.CancelledError:
                raise
            except OrchestratorUnavailable as exc:
                log.warning("orchestrator unavailable; scaling waits", extra={"error": exc.message})
            except Exception:
                log.exception("scaling pass failed")
            await asyncio.sleep(self.settings.tick)

    async def scale_once(self, now: datetime | None = None) -> None:
        """Stop idle instances beyond `min_instances`; start instances up to `min_instances`."""
        now = now or store.now()
        async with self._db.read() as session:
            functions = (await session.scalars(select(FunctionRow))).all()
            rows = (await session.scalars(select(InstanceRow).order_by(InstanceRow.last_active_at.desc()))).all()
            keys = dict((await session.execute(select(VersionRow.id, VersionRow.deployment_key))).all())
        load = await self._load()
        busy = {row.id: now for row in rows if load.get(f"{row.host}:{row.port}", 0) > 0}
        await self.touch(busy)
        by_function: defaultdict[str, list[InstanceRow]] = defaultdict(list)
        for row in rows:
            by_function[row.function_id].append(row)
        for function in functions:
            mine = by_function[function.id]
            idle_after = timedelta(seconds=function.idle_timeout_seconds)
            for row in mine[function.min_instances :]:
                if row.id not in busy and store.aware(row.last_active_at) + idle_after <= now:
                    await self._stop(function.name, row.id, keys.get(row.version_id), "idle")
            in_flight = sum(load.get(f"{row.host}:{row.port}", 0) for row in mine)
            wanted = function.min_instances
            if mine and in_flight >= len(mine) * function.concurrency:
                wanted = max(wanted, len(mine) + 1)  # every instance is at its concurrency: add one
            missing = min(wanted, function.max_instances) - len(mine) - self._pending[function.id]
            for _ in range(max(0, missing)):
                try:
                    await self.provision(function.name)
                except MortyError as exc:
                    log.debug("min_instances not met: %s", exc.message, extra={"function": function.name})
                    break

    async def _load(self) -> dict[str, int]:
        if self.load is None:
            return {}
        try:
            return await self.load()
        except Exception as exc:
            log.info("no load figures: %s", exc)
            return {}

    async def reconcile(self) -> None:
        async with self._db.read() as session:
            versions = (
                await session.execute(
                    select(VersionRow.id, VersionRow.function_id, VersionRow.deployment_key).where(
                        VersionRow.deployment_key.is_not(None),
                        # Not `deploying`: the instance a deployment boots for its snapshot is the deployer's.
                        VersionRow.status == VersionStatus.READY.value,
                    )
                )
            ).all()
            recorded = {row.id: row for row in (await session.scalars(select(InstanceRow))).all()}
        keys_by_version = {version_id: key for version_id, _, key in versions}
        running: set[str] = set()
        adopted: list[InstanceRow] = []
        moved: list[tuple[InstanceRow, str, int]] = []
        stamp = store.now()
        for version_id, function_id, key in versions:
            assert key is not None  # selected so
            for endpoint in await self._orchestrator.instances(key):
                running.add(endpoint.instance_id)
                if not endpoint.ready or endpoint.instance_id in self._stopping:
                    continue  # e.g. moving off a lost node: its record stays, so no replacement is started
                known = recorded.get(endpoint.instance_id)
                if known is not None:
                    if (known.host, known.port) != (endpoint.host, endpoint.port):
                        moved.append((known, endpoint.host, endpoint.port))
                    continue
                if self._pending[function_id]:
                    continue  # probably the one being provisioned: the provisioning records it
                if key in self.deploying:
                    continue  # the instance a (re)deployment boots for its snapshot
                adopted.append(
                    InstanceRow(
                        id=endpoint.instance_id, function_id=function_id, version_id=version_id, host=endpoint.host,
                        port=endpoint.port, start_path=StartPath.ADOPTED.value,
                        control_host=endpoint.control[0] if endpoint.control else None,
                        control_port=endpoint.control[1] if endpoint.control else None, provision_ms=0.0,
                        started_at=stamp, last_active_at=stamp,
                    )
                )  # fmt: skip
        gone = [instance_id for instance_id in recorded if instance_id not in running]
        if not adopted and not gone and not moved:
            return
        async with self._db.transaction() as session:
            # Read again here: an instance recorded since `recorded` was read is its provisioner's.
            adopted = [row for row in adopted if await session.get(InstanceRow, row.id) is None]
            session.add_all(adopted)
            if gone:
                await session.execute(delete(InstanceRow).where(InstanceRow.id.in_(gone)))
            for row, host, port in moved:
                await session.execute(update(InstanceRow).where(InstanceRow.id == row.id).values(host=host, port=port))
        log.info(
            "instances reconciled",
            extra={"adopted": [r.id for r in adopted], "gone": gone, "moved": [r.id for r, _, _ in moved]},
        )
        names = {function_id: name for function_id, name in await self._function_names()}

        def placed(row: InstanceRow, key: str, host: str, port: int) -> Placed:
            return Placed(names.get(row.function_id, ""), key, row.id, host, port, row.start_path)

        for instance_id in gone:
            row = recorded[instance_id]
            if (key := keys_by_version.get(row.version_id)) is not None:
                await self._run_hooks(self.after_gone, placed(row, key, row.host, row.port))
        for row, host, port in moved:
            if (key := keys_by_version.get(row.version_id)) is not None:
                for hook in self.after_move:
                    try:
                        await hook(placed(row, key, row.host, row.port), placed(row, key, host, port))
                    except Exception:
                        log.exception("instance move hook failed", extra={"instance": row.id})
        for row in adopted:
            if (key := keys_by_version.get(row.version_id)) is not None:
                await self._run_hooks(self.after_start, placed(row, key, row.host, row.port))
        async with self._db.read() as session:
            RUNNING.set(await session.scalar(select(func.count()).select_from(InstanceRow)) or 0)
