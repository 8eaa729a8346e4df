"""`/v1/functions/{name}/aliases`: names pointing at versions, and `/v1/resolve/{ref}`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from morty.api import store
from morty.api.models import Alias, AliasCreate, AliasList, AliasUpdate, Resolution
from morty.api.routes.deps import AUTHENTICATED, Morty, errors

router = APIRouter(prefix="/v1", tags=["aliases"], **AUTHENTICATED)


@router.post("/functions/{name}/aliases", status_code=201, response_model=Alias, responses=errors(404, 409, 422))
async def create_alias(name: str, request: AliasCreate, morty: Morty) -> Alias:
    async with morty.db.transaction() as session:
        alias = await store.create_alias(session, name, request)
    await morty.routes_changed(name)
    return alias


@router.get("/functions/{name}/aliases", response_model=AliasList, responses=errors(404))
async def list_aliases(name: str, morty: Morty) -> AliasList:
    async with morty.db.read() as session:
        return AliasList(items=await store.list_aliases(session, name))


@router.get("/functions/{name}/aliases/{alias}", response_model=Alias, responses=errors(404))
async def get_alias(name: str, alias: str, morty: Morty) -> Alias:
    async with morty.db.read() as session:
        return await store.get_alias(session, name, alias)


@router.patch("/functions/{name}/aliases/{alias}", response_model=Alias, responses=errors(404, 409, 422))
async def update_alias(name: str, alias: str, request: AliasUpdate, morty: Morty) -> Alias:
    """Point the alias at another version."""
    async with morty.db.transaction() as session:
        updated = await store.update_alias(session, name, alias, request.version)
    await morty.routes_changed(name)
    return updated


@router.delete("/functions/{name}/aliases/{alias}", status_code=204, response_class=Response, responses=errors(404))
async def delete_alias(name: str, alias: str, morty: Morty) -> Response:
    async with morty.db.transaction() as session:
        await store.delete_alias(session, name, alias)
    await morty.routes_changed(name)
    return Response(status_code=204)


@router.get("/resolve/{ref}", response_model=Resolution, responses=errors(404), tags=["resolve"])
async def resolve(
    ref: Annotated[str, Path(description="`name` (latest), `name@latest`, `name@1.2.3` or `name@alias`")],
    morty: Morty,
) -> Resolution:
    """Which version a reference means now: `latest` is the highest version that is ready."""
    async with morty.db.read() as session:
        return await store.resolve(session, ref)
