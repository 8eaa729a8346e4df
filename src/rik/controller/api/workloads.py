"""`/api/v1/workloads`: create, apply, list, get, scale, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from rik.controller import store
from rik.controller.api.deps import ControllerState, state
from rik.controller.errors import Invalid
from rik.model import ErrorBody, ScaleRequest, Workload, WorkloadList, WorkloadManifest

router = APIRouter(prefix="/api/v1/workloads", tags=["workloads"])
Controller = Annotated[ControllerState, Depends(state)]
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody},
}


SELECTOR_PATTERN = r"^[A-Za-z0-9._/-]+=[A-Za-z0-9._-]*(,[A-Za-z0-9._/-]+=[A-Za-z0-9._-]*)*$"


def parse_selector(selector: str | None) -> dict[str, str]:
    """`app=web,tier=front` → {"app": "web", "tier": "front"}."""
    if not selector:
        return {}
    labels = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if not sep or not key.strip():
            raise Invalid(f"label selector term {term!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


@router.post("", status_code=201, response_model=Workload, responses=ERRORS)
async def create_workload(manifest: WorkloadManifest, controller: Controller) -> Workload:
    async with controller.db.transaction() as session:
        workload, _ = await store.apply_workload(session, manifest, create_only=True)
    controller.leader.poke()
    return workload


@router.put("/{name}", response_model=Workload, responses={**ERRORS, 201: {"model": Workload}})
async def apply_workload(name: str, manifest: WorkloadManifest, controller: Controller, response: Response) -> Workload:
    if manifest.metadata.name != name:
        raise Invalid(f"metadata.name {manifest.metadata.name!r} does not match the URL's {name!r}")
    async with controller.db.transaction() as session:
        workload, created = await store.apply_workload(session, manifest)
    response.status_code = 201 if created else 200
    controller.leader.poke()
    return workload


@router.get("", response_model=WorkloadList)
async def list_workloads(
    controller: Controller,
    selector: Annotated[
        str | None, Query(max_length=1024, pattern=SELECTOR_PATTERN, description="label selector: k=v,k2=v2")
    ] = None,
) -> WorkloadList:
    labels = parse_selector(selector)
    async with controller.db.read() as session:
        rv = await store.current_resource_version(session)
        items = await store.list_workloads(session, labels)
    return WorkloadList(items=items, resource_version=rv)


@router.get("/{name}", response_model=Workload, responses=ERRORS)
async def get_workload(name: str, controller: Controller) -> Workload:
    async with controller.db.read() as session:
        return await store.get_workload(session, name)


@router.patch("/{name}/scale", response_model=Workload, responses=ERRORS)
async def scale_workload(name: str, request: ScaleRequest, controller: Controller) -> Workload:
    async with controller.db.transaction() as session:
        workload = await store.scale_workload(session, name, request.replicas)
    controller.leader.poke()
    return workload


@router.delete("/{name}", response_model=Workload, responses=ERRORS)
async def delete_workload(name: str, controller: Controller) -> Workload:
    async with controller.db.transaction() as session:
        return await store.delete_workload(session, name)
