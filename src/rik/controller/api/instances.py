"""`/api/v1/instances`: list, get, delete, status reports from riklets, and logs (proxied to the riklet)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse

from rik.controller import store
from rik.controller.api.deps import ControllerState, state
from rik.controller.errors import Conflict, RikError
from rik.model import ErrorBody, Instance, InstanceList, InstanceStatusReport, Phase

router = APIRouter(prefix="/api/v1/instances", tags=["instances"])
Controller = Annotated[ControllerState, Depends(state)]
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 409: {"model": ErrorBody}}


class NodeUnreachable(RikError):
    status_code = 502


@router.get("", response_model=InstanceList)
async def list_instances(
    controller: Controller,
    workload: Annotated[str | None, Query(max_length=64)] = None,
    node: Annotated[str | None, Query(max_length=64)] = None,
    phase: Phase | None = None,
) -> InstanceList:
    async with controller.db.read() as session:
        rv = await store.current_resource_version(session)
        items = await store.list_instances(session, workload=workload, node=node, phase=phase)
    return InstanceList(items=items, resource_version=rv)


@router.get("/{instance_id}", response_model=Instance, responses=ERRORS)
async def get_instance(instance_id: str, controller: Controller) -> Instance:
    async with controller.db.read() as session:
        return await store.get_instance(session, instance_id)


@router.delete("/{instance_id}", response_model=Instance, responses=ERRORS)
async def delete_instance(
    instance_id: str,
    controller: Controller,
    scale_down: Annotated[
        bool, Query(description="also lower the workload's replicas by one, so no replacement is created")
    ] = False,
) -> Instance:
    async with controller.db.transaction() as session:
        gone = await store.delete_instance(session, instance_id, scale_down=scale_down)
    controller.leader.poke()
    return gone


@router.put("/{instance_id}/status", responses={**ERRORS, 204: {"description": "deletion completed"}})
async def report_status(instance_id: str, report: InstanceStatusReport, controller: Controller) -> Response:
    async with controller.db.transaction() as session:
        instance = await store.report_instance_status(session, instance_id, report)
    if instance is None:
        return Response(status_code=204)
    return Response(instance.model_dump_json(), media_type="application/json")


@router.get(
    "/{instance_id}/logs",
    response_class=StreamingResponse,
    responses={**ERRORS, 200: {"content": {"text/plain": {}}}, 502: {"model": ErrorBody}},
)
async def instance_logs(
    instance_id: str,
    controller: Controller,
    tail_bytes: Annotated[int | None, Query(ge=0, le=64 * 1024 * 1024)] = None,
    follow: bool = False,
) -> StreamingResponse:
    async with controller.db.read() as session:
        instance, node = await store.get_instance_node(session, instance_id)
    if node is None:
        raise Conflict(f"instance {instance_id!r} is not placed on a node yet ({instance.phase})")
    params: dict[str, str] = {"follow": "true" if follow else "false"}
    if tail_bytes is not None:
        params["tail_bytes"] = str(tail_bytes)
    url = f"{node.riklet_url.rstrip('/')}/v1/instances/{instance_id}/logs"
    request = controller.http.build_request("GET", url, params=params, timeout=httpx.Timeout(10, read=None))
    try:
        upstream = await controller.http.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise NodeUnreachable(f"node {node.name} did not answer for logs: {exc}") from exc
    if upstream.status_code != 200:
        body = (await upstream.aread()).decode(errors="replace")[:500]
        await upstream.aclose()
        raise NodeUnreachable(f"node {node.name} answered {upstream.status_code} for logs: {body}")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(relay(), media_type="text/plain; charset=utf-8")
