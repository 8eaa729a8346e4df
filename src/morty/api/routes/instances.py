"""`/v1/functions/{name}/instances`: ask for an instance (ready when the answer comes), list, stop."""

from __future__ import annotations

from fastapi import APIRouter, Body

from morty.api import store
from morty.api.errors import Conflict
from morty.api.instances import Instances
from morty.api.models import Instance, InstanceCreate, InstanceList
from morty.api.routes.deps import AUTHENTICATED, Morty, MortyState, errors

router = APIRouter(prefix="/v1/functions/{name}/instances", tags=["instances"], **AUTHENTICATED)


async def _instances(morty: MortyState, name: str) -> Instances:
    """404 for an unknown function first; 409 when these Morty APIs run without an orchestrator."""
    async with morty.db.read() as session:
        await store.function_row(session, name)
    if morty.instances is None:
        raise Conflict("Morty APIs run without an orchestrator (start them with --rik-url): no instance can run")
    return morty.instances


@router.post("", status_code=201, response_model=Instance, responses=errors(404, 409, 422, 429, 503))
async def create_instance(
    name: str, morty: Morty, request: InstanceCreate = Body(default_factory=InstanceCreate)
) -> Instance:
    """Bring one instance of the version `version` resolves to up and answer once it is ready to serve
    (VM versions restore their snapshot). 429 at `max_instances`; 503 if the orchestrator cannot."""
    return await (await _instances(morty, name)).provision(name, request.version)


@router.get("", response_model=InstanceList, responses=errors(404, 409))
async def list_instances(name: str, morty: Morty) -> InstanceList:
    if morty.instances is None:
        await _instances(morty, name)
    assert morty.instances is not None
    return InstanceList(items=await morty.instances.of_function(name))


@router.delete("/{instance_id}", status_code=204, responses=errors(404, 409, 503))
async def delete_instance(name: str, instance_id: str, morty: Morty) -> None:
    await (await _instances(morty, name)).stop(name, instance_id)
