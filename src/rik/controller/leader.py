"""The work only one controller may do at a time: scheduling, noticing lost nodes, compacting the feed.

Controllers sharing one database compete for a lease row; the holder renews it every tick, and when it
dies another takes over once the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge, Histogram

from rik.controller import snapshots, store
from rik.controller.database import Database
from rik.controller.tables import InstanceRow, SnapshotRow
from rik.model import SnapshotPhase
from rik.scheduler import NodeView, PendingInstance, plan

log = logging.getLogger(__name__)

LEASE = "controller-leader"

IS_LEADER = Gauge("rik_controller_leader", "1 while this controller holds the leader lease")
PLACEMENTS = MetricCounter("rik_scheduler_placements_total", "Instances bound to a node")
UNSCHEDULABLE = Gauge("rik_scheduler_unschedulable", "Instances no node can take, at the last pass")
PASS_SECONDS = Histogram("rik_scheduler_pass_seconds", "Duration of one scheduling pass")
NODES_LOST = MetricCounter("rik_nodes_lost_total", "Nodes marked NotReady after missing heartbeats")


@dataclass(frozen=True)
class LeaderSettings:
    identity: str
    lease_ttl: float = 10.0
    node_timeout: float = 15.0
    tick: float = 0.5
    events_kept: int = 100_000


def _snapshot_of(spec: dict[str, Any]) -> str | None:
    vm = spec.get("vm") or {}
    name = vm.get("snapshot")
    return str(name) if name else None


def _pending(instance: InstanceRow, held: dict[str, SnapshotRow]) -> PendingInstance:
    """An instance as the scheduler sees it; one that restores a snapshot may only go where it is."""
    runtime = store.kind_runtime(instance.kind)
    name = _snapshot_of(instance.spec)
    if name is None:
        return PendingInstance(instance.id, instance.workload, runtime, instance.cpu, instance.memory)
    snapshot = held.get(name)
    if snapshot is None or snapshot.deleting:
        only_on: frozenset[str] = frozenset()
        why = f"snapshot {name} does not exist"
    elif snapshot.phase != SnapshotPhase.READY.value:
        only_on = frozenset()
        why = f"snapshot {name} is {snapshot.phase}, not Ready"
    else:
        only_on = frozenset({snapshot.node})
        why = f"snapshot {name} is held by node {snapshot.node}"
    return PendingInstance(
        instance.id, instance.workload, runtime, instance.cpu, instance.memory, only_on=only_on, only_on_reason=why
    )


class LeaderLoop:
    def __init__(self, db: Database, settings: LeaderSettings) -> None:
        self.db = db
        self.settings = settings
        self.is_leader = False
        self._leading_since = 0.0
        self._renewed_at = float("-inf")
        self._wake = asyncio.Event()

    def poke(self) -> None:
        """Ask for a scheduling pass now rather than at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        last_compaction = 0.0
        poked = False
        while True:
            try:
                await self._step(poked)
                if self.is_leader and time.monotonic() - last_compaction > 60:
                    async with self.db.transaction() as session:
                        await store.compact_events(session, self.settings.events_kept)
                    last_compaction = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leader loop step failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.tick)
            poked = self._wake.is_set()
            self._wake.clear()

    async def _step(self, poked: bool = False) -> None:
        """Renew the lease, mark lost nodes, schedule. When `poked` (new work) less than a tick after the
        lease was renewed, only schedule: the lease holds for `lease_ttl` from then, and the next tick
        renews it; new instances get their node one write transaction sooner."""
        if poked and self.is_leader and time.monotonic() - self._renewed_at < self.settings.tick:
            await self.schedule()
            return
        renewing = time.monotonic()
        async with self.db.transaction() as session:
            leader = await store.acquire_lease(
                session, LEASE, self.settings.identity, self.settings.lease_ttl, time.time()
            )
        if leader:
            self._renewed_at = renewing
        if leader != self.is_leader:
            log.info("leadership changed", extra={"leader": leader, "identity": self.settings.identity})
            self._leading_since = time.monotonic()
        self.is_leader = leader
        IS_LEADER.set(1 if leader else 0)
        if not leader:
            return
        await self.mark_lost_nodes()
        await self.schedule()

    async def mark_lost_nodes(self) -> None:
        """Mark nodes that stopped heartbeating. A controller that just became leader (or just started)
        first waits one node timeout: heartbeats sent while no controller was up were lost, and the
        nodes must get the chance to send new ones before they are judged."""
        if time.monotonic() - self._leading_since < self.settings.node_timeout:
            return
        deadline = store.now() - timedelta(seconds=self.settings.node_timeout)
        async with self.db.transaction() as session:
            lost = await store.mark_lost_nodes(session, deadline)
        for name in lost:
            NODES_LOST.inc()
            log.warning("node stopped heartbeating; marked NotReady", extra={"node": name})

    async def schedule(self) -> int:
        started = time.perf_counter()
        async with self.db.read() as session:
            nodes, placed, pending = await store.scheduling_snapshot(session)
            wanted_snapshots = {s for s in (_snapshot_of(i.spec) for i in pending) if s}
            held = await snapshots.ready_snapshot_nodes(session, wanted_snapshots)
        if not pending:
            UNSCHEDULABLE.set(0)
            return 0
        allocated_cpu: Counter[str] = Counter()
        allocated_memory: Counter[str] = Counter()
        spread: Counter[tuple[str, str]] = Counter()
        for instance in placed:
            assert instance.node is not None
            allocated_cpu[instance.node] += instance.cpu
            allocated_memory[instance.node] += instance.memory
            spread[(instance.workload, instance.node)] += 1
        views = [
            NodeView(
                name=n.name,
                cpu=n.cpu,
                memory=n.memory,
                cpu_allocated=allocated_cpu[n.name],
                memory_allocated=allocated_memory[n.name],
                runtimes=frozenset(n.runtimes),
            )
            for n in nodes
        ]
        decided = plan(views, [_pending(i, held) for i in pending], spread)
        async with self.db.transaction() as session:
            bound = await store.assign_instances(session, decided.assignments)
            for instance_id, why in decided.unschedulable.items():
                await store.mark_unschedulable(session, instance_id, why)
        PLACEMENTS.inc(bound)
        UNSCHEDULABLE.set(len(decided.unschedulable))
        PASS_SECONDS.observe(time.perf_counter() - started)
        if bound:
            log.info("scheduled instances", extra={"bound": bound, "unschedulable": len(decided.unschedulable)})
        return bound
