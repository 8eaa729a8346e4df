"""`/v1/functions/{name}/builds`: build records with their status and full log."""

from __future__ import annotations

from fastapi import APIRouter

from morty.api import store
from morty.api.models import Build, BuildList
from morty.api.routes.deps import AUTHENTICATED, Morty, errors

router = APIRouter(prefix="/v1/functions/{name}/builds", tags=["builds"], **AUTHENTICATED)


@router.get("", response_model=BuildList, responses=errors(404))
async def list_builds(name: str, morty: Morty) -> BuildList:
    async with morty.db.read() as session:
        return BuildList(items=await store.list_builds(session, name))


@router.get("/{build_id}", response_model=Build, responses=errors(404))
async def get_build(name: str, build_id: str, morty: Morty) -> Build:
    async with morty.db.read() as session:
        return await store.get_build(session, name, build_id)
