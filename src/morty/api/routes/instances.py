"""`/v1/functions/{name}/instances`: ask for an instance (ready when the answer comes), list, stop."""

from __future__ import annotations

from fastapi import APIRouter, Body

from morty.api.errors import Unavailable
from morty.api.instances import Instances
from morty.api.models import Instance, InstanceCreate, InstanceList
from morty.api.routes.deps import AUTHENTICATED, Morty, MortyState, errors

router = APIRouter(prefix="/v1/functions/{name}/instances", tags=["instances"], **AUTHENTICATED)


def _instances(morty: MortyState) -> Instances:
    if morty.instances is None:
        raise Unavailable("no orchestrator is attached to Morty APIs (start them with --rik-url)")
    return morty.instances


@router.post("", status_code=201, response_model=Instance, responses=errors(404, 409, 422, 429, 503))
async def create_instance(
    name: str, morty: Morty, request: InstanceCreate = Body(default_factory=InstanceCreate)
) -> Instance:
    """Bring one instance of the version `version` resolves to up and answer once it is ready to serve
    (VM versions restore their snapshot). 429 at `max_instances`; 503 if the orchestrator cannot."""
    return await _instances(morty).provision(name, request.version)


@router.get("", response_model=InstanceList, responses=errors(404))
async def list_instances(name: str, morty: Morty) -> InstanceList:
    if morty.instances is None:
        return InstanceList(items=[])
    return InstanceList(items=await morty.instances.list(name))


@router.delete("/{instance_id}", status_code=204, responses=errors(404, 503))
async def delete_instance(name: str, instance_id: str, morty: Morty) -> None:
    await _instances(morty).stop(name, instance_id)
