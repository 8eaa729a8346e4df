"""`/api/v1/nodes`: registration and heartbeats from riklets, list, get, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from rik.controller import store
from rik.controller.api.deps import ControllerState, state
from rik.model import ErrorBody, Node, NodeList, NodeRegistration

router = APIRouter(prefix="/api/v1/nodes", tags=["nodes"])
Controller = Annotated[ControllerState, Depends(state)]
ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody}, 409: {"model": ErrorBody}}


@router.post("", response_model=Node, responses=ERRORS)
async def register_node(registration: NodeRegistration, controller: Controller) -> Node:
    async with controller.db.transaction() as session:
        node = await store.register_node(
            session, registration, pool=controller.instance_pool, prefix=controller.node_prefix
        )
    controller.leader.poke()
    return node


@router.get("", response_model=NodeList)
async def list_nodes(controller: Controller) -> NodeList:
    async with controller.db.read() as session:
        rv = await store.current_resource_version(session)
        items = await store.list_nodes(session)
    return NodeList(items=items, resource_version=rv)


@router.get("/{name}", response_model=Node, responses=ERRORS)
async def get_node(name: str, controller: Controller) -> Node:
    async with controller.db.read() as session:
        return await store.get_node(session, name)


@router.post("/{name}/heartbeat", response_model=Node, responses=ERRORS)
async def heartbeat(name: str, controller: Controller) -> Node:
    async with controller.db.transaction() as session:
        return await store.heartbeat(session, name)


@router.delete("/{name}", response_model=Node, responses=ERRORS)
async def delete_node(name: str, controller: Controller) -> Node:
    async with controller.db.transaction() as session:
        node = await store.delete_node(session, name)
    controller.leader.poke()
    return node
