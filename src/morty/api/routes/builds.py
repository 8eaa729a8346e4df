"""`/v1/functions/{name}/builds`: build records with their status and full log; cancelling a build."""

from __future__ import annotations

from fastapi import APIRouter

from morty.api import store
from morty.api.errors import Conflict
from morty.api.models import Build, BuildList, BuildStatus
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


@router.post("/{build_id}/cancel", response_model=Build, responses=errors(404, 409))
async def cancel_build(name: str, build_id: str, morty: Morty) -> Build:
    """Stop a queued or running build: it ends `failed` with the message `cancelled`, its version `failed`;
    whatever version served before keeps serving. 409 once the build has finished."""
    async with morty.db.read() as session:
        build = await store.get_build(session, name, build_id)
    if build.status not in (BuildStatus.QUEUED, BuildStatus.RUNNING):
        raise Conflict(f"build {build_id} already finished ({build.status.value}: {build.message[:200]})")
    if not await morty.build_queue.cancel(build.id):
        async with morty.db.transaction() as session:
            await store.cancel_queued_build(session, build.id)
    async with morty.db.read() as session:
        return await store.get_build(session, name, build_id)
