"""Every read and write of the controller's state. Writes take an open transaction (`Database.transaction`)
and record one change-feed event per object they change, in that same transaction."""

from __future__ import annotations

import ipaddress
import secrets
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from rik.controller.errors import Conflict, Gone, Invalid, NotFound
from rik.controller.tables import RV_COUNTER, CounterRow, EventRow, InstanceRow, LeaseRow, NodeRow, WorkloadRow
from rik.model import (
    ACTIVE_PHASES,
    DesiredState,
    EventType,
    Instance,
    InstanceStatusReport,
    Kind,
    Node,
    NodeRegistration,
    NodeStatus,
    Phase,
    Resource,
    Workload,
    WorkloadManifest,
    WorkloadSpec,
)
from servicekit.database import as_utc


def now() -> datetime:
    return datetime.now(UTC)


_aware = as_utc


# Change feed ------------------------------------------------------------------------------------------


async def next_resource_version(session: AsyncSession) -> int:
    """The next resource version, for this transaction's next change.

    The first call increments the counter row, which locks it (PostgreSQL) or holds SQLite's write
    lock, until the transaction ends; later calls count on in memory and the final value is written
    back once, before commit (`Database.transaction` runs the `before_commit` hooks)."""
    last = session.info.get("rv_last")
    if last is None:
        result = await session.execute(
            update(CounterRow)
            .where(CounterRow.name == RV_COUNTER)
            .values(value=CounterRow.value + 1)
            .returning(CounterRow.value)
        )
        last = int(result.scalar_one())
        session.info.setdefault("before_commit", []).append(_store_resource_version)
    else:
        last += 1
    session.info["rv_last"] = last
    return int(last)


async def _store_resource_version(session: AsyncSession) -> None:
    await session.execute(update(CounterRow).where(CounterRow.name == RV_COUNTER).values(value=session.info["rv_last"]))


async def current_resource_version(session: AsyncSession) -> int:
    value = await session.scalar(select(CounterRow.value).where(CounterRow.name == RV_COUNTER))
    return int(value or 0)


async def record_event(
    session: AsyncSession,
    resource: Resource,
    type_: EventType,
    name: str,
    obj: dict[str, Any],
    rv: int,
    *,
    node: str | None = None,
    prev_node: str | None = None,
) -> None:
    session.add(
        EventRow(
            resource_version=rv,
            resource=resource.value,
            type=type_.value,
            name=name,
            node=node,
            prev_node=prev_node,
            object=obj,
            created_at=now(),
        )
    )


async def events_since(
    session: AsyncSession,
    since: int,
    *,
    resources: set[Resource],
    node: str | None = None,
    workload: str | None = None,
    limit: int = 500,
) -> list[EventRow]:
    oldest = await session.scalar(select(func.min(EventRow.resource_version)))
    if oldest is not None and since < oldest - 1:
        raise Gone(f"resource version {since} is older than the retained history (oldest {oldest})")
    query = (
        select(EventRow)
        .where(EventRow.resource_version > since)
        .where(EventRow.resource.in_([r.value for r in resources]))
        .order_by(EventRow.resource_version)
        .limit(limit)
    )
    if node is not None:
        query = query.where((EventRow.node == node) | (EventRow.prev_node == node))
    if workload is not None:
        query = query.where(
            ((EventRow.resource == Resource.WORKLOADS.value) & (EventRow.name == workload))
            | ((EventRow.resource == Resource.INSTANCES.value) & (EventRow.name.like(f"{workload}-%")))
        )
    return list((await session.scalars(query)).all())


async def compact_events(session: AsyncSession, keep: int) -> int:
    newest = await session.scalar(select(func.max(EventRow.resource_version)))
    if newest is None:
        return 0
    result = await session.execute(delete(EventRow).where(EventRow.resource_version <= newest - keep))
    return int(result.rowcount)  # type: ignore[attr-defined]


# Workloads --------------------------------------------------------------------------------------------


def _phase_counts(rows: list[InstanceRow]) -> Counter[str]:
    return Counter(row.phase for row in rows if row.desired_state != DesiredState.DELETED.value)


def workload_model(row: WorkloadRow, instances: list[InstanceRow]) -> Workload:
    counts = _phase_counts(instances)
    return Workload.model_validate(
        {
            "kind": row.kind,
            "metadata": {
                "name": row.name,
                "uid": row.uid,
                "labels": row.labels,
                "resource_version": row.resource_version,
                "created_at": _aware(row.created_at),
                "updated_at": _aware(row.updated_at),
            },
            "spec": row.spec,
            "status": {
                "replicas": row.spec.get("replicas", 1),
                "running": counts[Phase.RUNNING.value],
                "pending": counts[Phase.PENDING.value] + counts[Phase.CREATING.value],
                "failed": counts[Phase.FAILED.value],
                "paused": counts[Phase.PAUSED.value],
            },
        }
    )


def _workload_dump(row: WorkloadRow, instances: list[InstanceRow]) -> dict[str, Any]:
    return workload_model(row, instances).model_dump(mode="json", by_alias=True)


async def _instances_of(session: AsyncSession, workload: str) -> list[InstanceRow]:
    result = await session.scalars(select(InstanceRow).where(InstanceRow.workload == workload))
    return list(result.all())


async def get_workload(session: AsyncSession, name: str) -> Workload:
    row = await session.get(WorkloadRow, name)
    if row is None:
        raise NotFound(f"workload {name!r} not found")
    return workload_model(row, await _instances_of(session, name))


async def list_workloads(session: AsyncSession, labels: dict[str, str]) -> list[Workload]:
    rows = (await session.scalars(select(WorkloadRow).order_by(WorkloadRow.name))).all()
    instances = (await session.scalars(select(InstanceRow))).all()
    by_workload: dict[str, list[InstanceRow]] = {}
    for instance in instances:
        by_workload.setdefault(instance.workload, []).append(instance)
    return [
        workload_model(row, by_workload.get(row.name, []))
        for row in rows
        if all(row.labels.get(k) == v for k, v in labels.items())
    ]


async def apply_workload(
    session: AsyncSession, manifest: WorkloadManifest, *, create_only: bool = False
) -> tuple[Workload, bool]:
    """Create the workload or bring an existing one to the manifest. Returns (workload, created).

    A changed spec (other than `replicas`) replaces every instance: the old ones are asked to stop
    and new ones are created with the new spec."""
    name = manifest.metadata.name
    spec = manifest.spec.model_dump(mode="json")
    row = await session.get(WorkloadRow, name, with_for_update=True)
    stamp = now()
    rv = await next_resource_version(session)
    created = row is None
    if row is None:
        row = WorkloadRow(
            name=name,
            uid=str(uuid.uuid4()),
            kind=manifest.kind.value,
            labels=dict(manifest.metadata.labels),
            spec=spec,
            resource_version=rv,
            created_at=stamp,
            updated_at=stamp,
        )
        session.add(row)
    else:
        if create_only:
            raise Conflict(f"workload {name!r} already exists; use PUT to update it")
        if row.kind != manifest.kind.value:
            raise Conflict(f"workload {name!r} is a {row.kind}; delete it before re-creating it as a {manifest.kind}")
        template_changed = _template(row.spec) != _template(spec)
        row.labels = dict(manifest.metadata.labels)
        row.spec = spec
        row.resource_version = rv
        row.updated_at = stamp
        if template_changed:
            for instance in await _instances_of(session, name):
                await _request_instance_deletion(session, instance, "SpecChanged")
    await session.flush()
    await _reconcile_replicas(session, row)
    instances = await _instances_of(session, name)
    await record_event(
        session,
        Resource.WORKLOADS,
        EventType.ADDED if created else EventType.MODIFIED,
        name,
        _workload_dump(row, instances),
        rv,
    )
    return workload_model(row, instances), created


def _template(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "replicas"}


async def scale_workload(session: AsyncSession, name: str, replicas: int) -> Workload:
    row = await session.get(WorkloadRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"workload {name!r} not found")
    rv = await next_resource_version(session)
    row.spec = {**row.spec, "replicas": replicas}
    row.resource_version = rv
    row.updated_at = now()
    await _reconcile_replicas(session, row)
    instances = await _instances_of(session, name)
    await record_event(session, Resource.WORKLOADS, EventType.MODIFIED, name, _workload_dump(row, instances), rv)
    return workload_model(row, instances)


async def delete_workload(session: AsyncSession, name: str) -> Workload:
    row = await session.get(WorkloadRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"workload {name!r} not found")
    instances = await _instances_of(session, name)
    gone = workload_model(row, instances)
    for instance in instances:
        await _request_instance_deletion(session, instance, "WorkloadDeleted")
    rv = await next_resource_version(session)
    await record_event(
        session, Resource.WORKLOADS, EventType.DELETED, name, gone.model_dump(mode="json", by_alias=True), rv
    )
    await session.delete(row)
    return gone


async def _reconcile_replicas(session: AsyncSession, row: WorkloadRow) -> None:
    """Create or remove instances so that `replicas` of them are wanted. Failed instances keep their
    slot (so a broken image is not restarted in a loop); deleting one makes room for a replacement."""
    wanted = [i for i in await _instances_of(session, row.name) if i.desired_state != DesiredState.DELETED.value]
    replicas = int(row.spec.get("replicas", 1))
    if len(wanted) < replicas:
        for _ in range(replicas - len(wanted)):
            await _create_instance(session, row)
    elif len(wanted) > replicas:
        # Remove what serves least first: failed, then unplaced, then the newest.
        order = {
            Phase.FAILED.value: 0,
            Phase.PENDING.value: 1,
            Phase.CREATING.value: 2,
            Phase.RUNNING.value: 3,
        }
        surplus = sorted(wanted, key=lambda i: (order.get(i.phase, 0), -_aware(i.created_at).timestamp()))
        for instance in surplus[: len(wanted) - replicas]:
            await _request_instance_deletion(session, instance, "ScaledDown")


# Instances --------------------------------------------------------------------------------------------


def instance_model(row: InstanceRow, node: NodeRow | None = None) -> Instance:
    return Instance.model_validate(
        {
            "id": row.id,
            "workload": row.workload,
            "kind": row.kind,
            "spec": row.spec,
            "node": row.node,
            "phase": row.phase,
            "desired_state": row.desired_state,
            "reason": row.reason,
            "message": row.message,
            "address": row.address,
            "host_address": node.address if node is not None else None,
            "ports": row.ports,
            "resource_version": row.resource_version,
            "created_at": _aware(row.created_at),
            "updated_at": _aware(row.updated_at),
        }
    )


async def _instance_dump(session: AsyncSession, row: InstanceRow) -> dict[str, Any]:
    node = await session.get(NodeRow, row.node) if row.node else None
    return instance_model(row, node).model_dump(mode="json")


async def _create_instance(session: AsyncSession, workload: WorkloadRow) -> InstanceRow:
    spec = WorkloadSpec.model_validate(workload.spec)
    stamp = now()
    rv = await next_resource_version(session)
    row = InstanceRow(
        id=f"{workload.name}-{secrets.token_hex(4)}",
        workload=workload.name,
        kind=workload.kind,
        spec=workload.spec,
        cpu=spec.resources.cpu,
        memory=spec.resources.memory,
        node=None,
        phase=Phase.PENDING.value,
        desired_state=DesiredState.RUNNING.value,
        reason="Unscheduled",
        message="waiting for the scheduler",
        address=None,
        ports=[],
        resource_version=rv,
        created_at=stamp,
        updated_at=stamp,
    )
    session.add(row)
    await record_event(session, Resource.INSTANCES, EventType.ADDED, row.id, await _instance_dump(session, row), rv)
    return row


async def touch_instance(session: AsyncSession, row: InstanceRow, prev_node: str | None) -> None:
    rv = await next_resource_version(session)
    row.resource_version = rv
    row.updated_at = now()
    await record_event(
        session,
        Resource.INSTANCES,
        EventType.MODIFIED,
        row.id,
        await _instance_dump(session, row),
        rv,
        node=row.node,
        prev_node=prev_node,
    )


async def _remove_instance(session: AsyncSession, row: InstanceRow) -> None:
    rv = await next_resource_version(session)
    dump = await _instance_dump(session, row)
    dump["resource_version"] = rv
    await record_event(session, Resource.INSTANCES, EventType.DELETED, row.id, dump, rv, node=row.node)
    await session.delete(row)


async def _request_instance_deletion(session: AsyncSession, row: InstanceRow, reason: str) -> None:
    """Instances that never reached a node (or whose node is gone) are removed at once; the others are
    marked, and removed when their riklet reports them Terminated."""
    if row.node is None or row.phase in (Phase.TERMINATED.value,):
        await _remove_instance(session, row)
        return
    node = await session.get(NodeRow, row.node)
    if node is None or node.status != NodeStatus.READY.value:
        await _remove_instance(session, row)
        return
    if row.desired_state != DesiredState.DELETED.value:
        row.desired_state = DesiredState.DELETED.value
        row.reason = reason
        await touch_instance(session, row, prev_node=None)


async def get_instance(session: AsyncSession, instance_id: str) -> Instance:
    row = await session.get(InstanceRow, instance_id)
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found")
    node = await session.get(NodeRow, row.node) if row.node else None
    return instance_model(row, node)


async def get_instance_node(session: AsyncSession, instance_id: str) -> tuple[Instance, Node | None]:
    row = await session.get(InstanceRow, instance_id)
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found")
    node = await session.get(NodeRow, row.node) if row.node else None
    return instance_model(row, node), (await node_model(session, node) if node else None)


async def list_instances(
    session: AsyncSession, *, workload: str | None = None, node: str | None = None, phase: Phase | None = None
) -> list[Instance]:
    query = select(InstanceRow).order_by(InstanceRow.created_at, InstanceRow.id)
    if workload is not None:
        query = query.where(InstanceRow.workload == workload)
    if node is not None:
        query = query.where(InstanceRow.node == node)
    if phase is not None:
        query = query.where(InstanceRow.phase == phase.value)
    rows = (await session.scalars(query)).all()
    nodes = {n.name: n for n in (await session.scalars(select(NodeRow))).all()}
    return [instance_model(row, nodes.get(row.node or "")) for row in rows]


async def delete_instance(session: AsyncSession, instance_id: str, *, scale_down: bool = False) -> Instance:
    """Delete one instance. Its workload gets a replacement if it still wants the replicas, unless
    `scale_down`: then the workload's replicas drop by one in the same transaction, so exactly this
    instance goes (what an autoscaler removing an idle instance needs)."""
    row = await session.get(InstanceRow, instance_id, with_for_update=True)
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found")
    gone = instance_model(row)
    if row.desired_state == DesiredState.DELETED.value:
        return gone
    await _request_instance_deletion(session, row, "ScaledDown" if scale_down else "Deleted")
    workload = await session.get(WorkloadRow, gone.workload, with_for_update=True)
    if workload is None:
        return gone
    await session.flush()
    if scale_down:
        rv = await next_resource_version(session)
        workload.spec = {**workload.spec, "replicas": max(0, int(workload.spec.get("replicas", 1)) - 1)}
        workload.resource_version = rv
        workload.updated_at = now()
        instances = await _instances_of(session, workload.name)
        dump = _workload_dump(workload, instances)
        await record_event(session, Resource.WORKLOADS, EventType.MODIFIED, workload.name, dump, rv)
    await _reconcile_replicas(session, workload)
    return gone


async def report_instance_status(
    session: AsyncSession, instance_id: str, report: InstanceStatusReport
) -> Instance | None:
    """Apply a riklet's report. Returns None when the report completed a deletion."""
    row = await session.get(InstanceRow, instance_id, with_for_update=True)
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found")
    if row.node != report.node:
        raise Conflict(f"instance {instance_id!r} is assigned to {row.node!r}, not {report.node!r}")
    if report.phase == Phase.TERMINATED and row.desired_state == DesiredState.DELETED.value:
        await _remove_instance(session, row)
        return None
    row.phase = report.phase.value
    row.reason = report.reason
    row.message = report.message
    row.address = report.address
    row.ports = [p.model_dump(mode="json") for p in report.ports]
    await touch_instance(session, row, prev_node=None)
    node = await session.get(NodeRow, row.node) if row.node else None
    return instance_model(row, node)


# Nodes ------------------------------------------------------------------------------------------------


async def _allocations(session: AsyncSession, node: str | None = None) -> dict[str, tuple[int, int]]:
    """CPU and memory held on each node by its active instances."""
    query = (
        select(InstanceRow.node, func.sum(InstanceRow.cpu), func.sum(InstanceRow.memory))
        .where(InstanceRow.node.is_not(None))
        .where(InstanceRow.phase.in_([p.value for p in ACTIVE_PHASES]))
        .group_by(InstanceRow.node)
    )
    if node is not None:
        query = query.where(InstanceRow.node == node)
    return {str(name): (int(cpu), int(memory)) for name, cpu, memory in (await session.execute(query)).all()}


async def node_model(
    session: AsyncSession, row: NodeRow, allocations: dict[str, tuple[int, int]] | None = None
) -> Node:
    if allocations is None:
        allocations = await _allocations(session, row.name)
    allocated = allocations.get(row.name, (0, 0))
    return Node.model_validate(
        {
            "name": row.name,
            "address": row.address,
            "riklet_url": row.riklet_url,
            "capacity": {"cpu": row.cpu, "memory": row.memory},
            "allocated": {"cpu": int(allocated[0]), "memory": int(allocated[1])},
            "labels": row.labels,
            "runtimes": row.runtimes,
            "subnet": row.subnet,
            "status": row.status,
            "last_heartbeat": _aware(row.last_heartbeat),
            "resource_version": row.resource_version,
            "created_at": _aware(row.created_at),
        }
    )


async def _record_node(session: AsyncSession, row: NodeRow, type_: EventType) -> Node:
    """Give the node a new resource version and put its state in the change feed."""
    row.resource_version = await next_resource_version(session)
    await session.flush()
    node = await node_model(session, row)
    await record_event(
        session, Resource.NODES, type_, row.name, node.model_dump(mode="json"), row.resource_version, node=row.name
    )
    return node


async def get_node(session: AsyncSession, name: str) -> Node:
    row = await session.get(NodeRow, name)
    if row is None:
        raise NotFound(f"node {name!r} not found")
    return await node_model(session, row)


async def list_nodes(session: AsyncSession) -> list[Node]:
    rows = (await session.scalars(select(NodeRow).order_by(NodeRow.name))).all()
    allocations = await _allocations(session)
    return [await node_model(session, row, allocations) for row in rows]


async def _allocate_subnet(session: AsyncSession, pool: ipaddress.IPv4Network, prefix: int) -> str:
    used = set((await session.scalars(select(NodeRow.subnet))).all())
    for candidate in pool.subnets(new_prefix=prefix):
        if str(candidate) not in used:
            return str(candidate)
    raise Conflict(f"no free /{prefix} subnet left in {pool}")


async def register_node(
    session: AsyncSession, registration: NodeRegistration, *, pool: ipaddress.IPv4Network, prefix: int
) -> Node:
    row = await session.get(NodeRow, registration.name, with_for_update=True)
    stamp = now()
    if registration.subnet is not None:
        try:
            subnet = str(ipaddress.IPv4Network(registration.subnet))
        except ValueError as exc:
            raise Invalid(f"subnet: {exc}") from exc
        clash = await session.scalar(
            select(NodeRow.name).where(NodeRow.subnet == subnet).where(NodeRow.name != registration.name)
        )
        if clash is not None:
            raise Conflict(f"subnet {subnet} already belongs to node {clash!r}")
    elif row is not None:
        subnet = row.subnet
    else:
        subnet = await _allocate_subnet(session, pool, prefix)
    created = row is None
    if row is None:
        row = NodeRow(name=registration.name, created_at=stamp, resource_version=0)
        session.add(row)
    row.address = registration.address
    row.riklet_url = registration.riklet_url
    row.cpu = registration.capacity.cpu
    row.memory = registration.capacity.memory
    row.labels = dict(registration.labels)
    row.runtimes = list(registration.runtimes)
    row.subnet = subnet
    row.status = NodeStatus.READY.value
    row.last_heartbeat = stamp
    return await _record_node(session, row, EventType.ADDED if created else EventType.MODIFIED)


async def heartbeat(session: AsyncSession, name: str) -> Node:
    row = await session.get(NodeRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"node {name!r} is not registered")
    row.last_heartbeat = now()
    if row.status != NodeStatus.READY.value:
        row.status = NodeStatus.READY.value
        return await _record_node(session, row, EventType.MODIFIED)
    return await node_model(session, row)


async def delete_node(session: AsyncSession, name: str) -> Node:
    row = await session.get(NodeRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"node {name!r} not found")
    await _release_instances_of(session, name, f"node {name} was deleted")
    gone = await _record_node(session, row, EventType.DELETED)
    await session.delete(row)
    return gone


async def mark_lost_nodes(session: AsyncSession, deadline: datetime) -> list[str]:
    """Nodes whose last heartbeat is older than `deadline` become NotReady; their instances are
    put back to Pending (or removed, if they were being deleted) so the scheduler places them again."""
    rows = (
        await session.scalars(
            select(NodeRow)
            .where(NodeRow.status == NodeStatus.READY.value)
            .where(NodeRow.last_heartbeat < deadline)
            .with_for_update()
        )
    ).all()
    lost = []
    for row in rows:
        if _aware(row.last_heartbeat) >= deadline:
            continue
        row.status = NodeStatus.NOT_READY.value
        await _record_node(session, row, EventType.MODIFIED)
        await _release_instances_of(session, row.name, f"node {row.name} stopped heartbeating")
        lost.append(row.name)
    return lost


async def _release_instances_of(session: AsyncSession, node: str, why: str) -> None:
    rows = (await session.scalars(select(InstanceRow).where(InstanceRow.node == node))).all()
    for row in rows:
        if row.desired_state == DesiredState.DELETED.value or row.phase == Phase.TERMINATED.value:
            await _remove_instance(session, row)
            continue
        row.node = None
        row.phase = Phase.PENDING.value
        row.reason = "NodeLost"
        row.message = f"{why}; rescheduling"
        row.address = None
        row.ports = []
        await touch_instance(session, row, prev_node=node)


# Scheduling -------------------------------------------------------------------------------------------


async def scheduling_snapshot(
    session: AsyncSession,
) -> tuple[list[NodeRow], list[InstanceRow], list[InstanceRow]]:
    """(ready nodes, instances holding resources on a node, instances waiting for a node)."""
    nodes = list((await session.scalars(select(NodeRow).where(NodeRow.status == NodeStatus.READY.value))).all())
    placed = list(
        (
            await session.scalars(
                select(InstanceRow)
                .where(InstanceRow.node.is_not(None))
                .where(InstanceRow.phase.in_([p.value for p in ACTIVE_PHASES]))
            )
        ).all()
    )
    pending = list(
        (
            await session.scalars(
                select(InstanceRow)
                .where(InstanceRow.node.is_(None))
                .where(InstanceRow.desired_state != DesiredState.DELETED.value)
                .order_by(InstanceRow.created_at, InstanceRow.id)
            )
        ).all()
    )
    return nodes, placed, pending


async def assign_instances(session: AsyncSession, assignments: dict[str, str]) -> int:
    """Bind instances to nodes, skipping any that changed since the snapshot. Returns how many."""
    if not assignments:
        return 0
    rows = (
        await session.scalars(select(InstanceRow).where(InstanceRow.id.in_(list(assignments))).with_for_update())
    ).all()
    ready = set(
        (
            await session.scalars(
                select(NodeRow.name)
                .where(NodeRow.name.in_(set(assignments.values())))
                .where(NodeRow.status == NodeStatus.READY.value)
            )
        ).all()
    )
    bound = 0
    for row in rows:
        node = assignments[row.id]
        if row.node is not None or row.desired_state == DesiredState.DELETED.value or node not in ready:
            continue
        row.node = node
        row.phase = Phase.PENDING.value
        row.reason = "Scheduled"
        row.message = f"assigned to node {node}"
        await touch_instance(session, row, prev_node=None)
        bound += 1
    return bound


async def mark_unschedulable(session: AsyncSession, instance_id: str, message: str) -> None:
    row = await session.get(InstanceRow, instance_id, with_for_update=True)
    if row is None or row.node is not None or row.message == message:
        return
    row.reason = "Unschedulable"
    row.message = message
    await touch_instance(session, row, prev_node=None)


# Leases -----------------------------------------------------------------------------------------------


async def acquire_lease(session: AsyncSession, name: str, holder: str, ttl: float, clock: float) -> bool:
    """Take or renew the named lease; True when `holder` holds it until `clock + ttl`."""
    result = await session.execute(
        update(LeaseRow)
        .where(LeaseRow.name == name)
        .where((LeaseRow.holder == holder) | (LeaseRow.expires_at < clock))
        .values(holder=holder, expires_at=clock + ttl)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        return True
    if await session.get(LeaseRow, name) is not None:
        return False
    session.add(LeaseRow(name=name, holder=holder, expires_at=clock + ttl))
    await session.flush()
    return True


async def lease_holder(session: AsyncSession, name: str) -> tuple[str, float] | None:
    row = await session.get(LeaseRow, name)
    return (row.holder, row.expires_at) if row else None


def kind_runtime(kind: str) -> str:
    return "vm" if kind == Kind.VM.value else "container"
