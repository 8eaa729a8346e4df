"""Snapshots of VM instances, and pausing and resuming instances: state, transitions and feed events.

A snapshot is requested on a running VM instance and taken by the riklet of its node, which keeps the
files; it is Ready once that riklet reports it. Deleting one asks that riklet to remove the files first.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from rik.controller.errors import Conflict, NotFound
from rik.controller.store import (
    get_instance,
    instance_model,
    next_resource_version,
    now,
    record_event,
    touch_instance,
)
from rik.controller.tables import InstanceRow, NodeRow, SnapshotRow
from rik.model import (
    DesiredState,
    EventType,
    Instance,
    Kind,
    NodeStatus,
    Phase,
    Resource,
    Snapshot,
    SnapshotPhase,
    SnapshotStatusReport,
)


def snapshot_model(row: SnapshotRow) -> Snapshot:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=now().tzinfo)
    return Snapshot(
        name=row.name,
        workload=row.workload,
        instance=row.instance,
        node=row.node,
        phase=SnapshotPhase(row.phase),
        deleting=row.deleting,
        reason=row.reason,
        message=row.message,
        size_bytes=row.size_bytes,
        resource_version=row.resource_version,
        created_at=created,
    )


async def _record_snapshot(session: AsyncSession, row: SnapshotRow, type_: EventType) -> Snapshot:
    row.resource_version = await next_resource_version(session)
    snapshot = snapshot_model(row)
    dump: dict[str, Any] = snapshot.model_dump(mode="json")
    await record_event(session, Resource.SNAPSHOTS, type_, row.name, dump, row.resource_version, node=row.node)
    return snapshot


async def create_snapshot(session: AsyncSession, instance_id: str, name: str) -> Snapshot:
    instance = await session.get(InstanceRow, instance_id, with_for_update=True)
    if instance is None:
        raise NotFound(f"instance {instance_id!r} not found")
    if instance.kind != Kind.VM.value:
        raise Conflict(f"instance {instance_id!r} is a {instance.kind}; only VM instances can be snapshotted")
    if instance.node is None or instance.phase not in (Phase.RUNNING.value, Phase.PAUSED.value):
        raise Conflict(f"instance {instance_id!r} is {instance.phase}; a snapshot needs it Running or Paused")
    if await session.get(SnapshotRow, name) is not None:
        raise Conflict(f"snapshot {name!r} already exists")
    row = SnapshotRow(
        name=name,
        workload=instance.workload,
        instance=instance.id,
        node=instance.node,
        phase=SnapshotPhase.PENDING.value,
        deleting=False,
        reason="Requested",
        message=f"waiting for node {instance.node} to take it",
        size_bytes=None,
        resource_version=0,
        created_at=now(),
    )
    session.add(row)
    return await _record_snapshot(session, row, EventType.ADDED)


async def get_snapshot(session: AsyncSession, name: str) -> Snapshot:
    row = await session.get(SnapshotRow, name)
    if row is None:
        raise NotFound(f"snapshot {name!r} not found")
    return snapshot_model(row)


async def list_snapshots(
    session: AsyncSession, *, workload: str | None = None, node: str | None = None
) -> list[Snapshot]:
    query = select(SnapshotRow).order_by(SnapshotRow.created_at, SnapshotRow.name)
    if workload is not None:
        query = query.where(SnapshotRow.workload == workload)
    if node is not None:
        query = query.where(SnapshotRow.node == node)
    return [snapshot_model(row) for row in (await session.scalars(query)).all()]


async def delete_snapshot(session: AsyncSession, name: str) -> Snapshot:
    row = await session.get(SnapshotRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"snapshot {name!r} not found")
    node = await session.get(NodeRow, row.node)
    if node is None or node.status != NodeStatus.READY.value:
        gone = await _record_snapshot(session, row, EventType.DELETED)
        await session.delete(row)
        return gone
    row.deleting = True
    return await _record_snapshot(session, row, EventType.MODIFIED)


async def report_snapshot(session: AsyncSession, name: str, report: SnapshotStatusReport) -> Snapshot | None:
    """Apply the holding riklet's report; None when it completed the deletion."""
    row = await session.get(SnapshotRow, name, with_for_update=True)
    if row is None:
        raise NotFound(f"snapshot {name!r} not found")
    if row.node != report.node:
        raise Conflict(f"snapshot {name!r} is held by {row.node!r}, not {report.node!r}")
    if report.deleted:
        await _record_snapshot(session, row, EventType.DELETED)
        await session.delete(row)
        return None
    if report.phase is not None:
        row.phase = report.phase.value
    row.reason = report.reason
    row.message = report.message
    row.size_bytes = report.size_bytes
    return await _record_snapshot(session, row, EventType.MODIFIED)


async def ready_snapshot_nodes(session: AsyncSession, names: set[str]) -> dict[str, SnapshotRow]:
    """The named snapshots, for placing instances that restore them."""
    if not names:
        return {}
    rows = (await session.scalars(select(SnapshotRow).where(SnapshotRow.name.in_(names)))).all()
    return {row.name: row for row in rows}


async def set_paused(session: AsyncSession, instance_id: str, paused: bool) -> Instance:
    """Ask the instance's riklet to pause (stop its CPUs, keep its memory) or resume it."""
    row = await session.get(InstanceRow, instance_id, with_for_update=True)
    if row is None:
        raise NotFound(f"instance {instance_id!r} not found")
    if row.kind != Kind.VM.value:
        raise Conflict(f"instance {instance_id!r} is a {row.kind}; only VM instances can be paused")
    if row.desired_state == DesiredState.DELETED.value:
        raise Conflict(f"instance {instance_id!r} is being deleted")
    wanted = DesiredState.PAUSED if paused else DesiredState.RUNNING
    if row.desired_state != wanted.value:
        row.desired_state = wanted.value
        await touch_instance(session, row, prev_node=None)
    node = await session.get(NodeRow, row.node) if row.node else None
    return instance_model(row, node) if node else await get_instance(session, instance_id)
