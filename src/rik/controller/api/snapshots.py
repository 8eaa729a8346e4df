"""`/api/v1/snapshots` and the instance actions around them: snapshot, pause, resume."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from rik.controller import snapshots, store
from rik.controller.api.deps import ControllerState, state
from rik.model import ErrorBody, Instance, Snapshot, SnapshotList, SnapshotRequest, SnapshotStatusReport

router = APIRouter(tags=["snapshots"])
Controller = Annotated[ControllerState, Depends(state)]
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 409: {"model": ErrorBody}}


@router.post("/api/v1/instances/{instance_id}/snapshots", status_code=201, response_model=Snapshot, responses=ERRORS)
async def snapshot_instance(instance_id: str, request: SnapshotRequest, controller: Controller) -> Snapshot:
    """Ask the instance's node to snapshot it (memory and disk); poll or watch until Ready."""
    async with controller.db.transaction() as session:
        return await snapshots.create_snapshot(session, instance_id, request.name)


@router.post("/api/v1/instances/{instance_id}/pause", response_model=Instance, responses=ERRORS)
async def pause_instance(instance_id: str, controller: Controller) -> Instance:
    async with controller.db.transaction() as session:
        return await snapshots.set_paused(session, instance_id, True)


@router.post("/api/v1/instances/{instance_id}/resume", response_model=Instance, responses=ERRORS)
async def resume_instance(instance_id: str, controller: Controller) -> Instance:
    async with controller.db.transaction() as session:
        return await snapshots.set_paused(session, instance_id, False)


@router.get("/api/v1/snapshots", response_model=SnapshotList)
async def list_snapshots(
    controller: Controller,
    workload: Annotated[str | None, Query(max_length=64)] = None,
    node: Annotated[str | None, Query(max_length=64)] = None,
) -> SnapshotList:
    async with controller.db.read() as session:
        rv = await store.current_resource_version(session)
        items = await snapshots.list_snapshots(session, workload=workload, node=node)
    return SnapshotList(items=items, resource_version=rv)


@router.get("/api/v1/snapshots/{name}", response_model=Snapshot, responses=ERRORS)
async def get_snapshot(name: str, controller: Controller) -> Snapshot:
    async with controller.db.read() as session:
        return await snapshots.get_snapshot(session, name)


@router.delete("/api/v1/snapshots/{name}", response_model=Snapshot, responses=ERRORS)
async def delete_snapshot(name: str, controller: Controller) -> Snapshot:
    async with controller.db.transaction() as session:
        return await snapshots.delete_snapshot(session, name)


@router.put("/api/v1/snapshots/{name}/status", responses={**ERRORS, 204: {"description": "deletion completed"}})
async def report_snapshot(name: str, report: SnapshotStatusReport, controller: Controller) -> Response:
    async with controller.db.transaction() as session:
        snapshot = await snapshots.report_snapshot(session, name, report)
    controller.leader.poke()
    if snapshot is None:
        return Response(status_code=204)
    return Response(snapshot.model_dump_json(), media_type="application/json")
