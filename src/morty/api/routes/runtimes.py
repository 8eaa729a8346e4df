"""`/v1/runtimes`: the runtimes a function can use."""

from __future__ import annotations

from fastapi import APIRouter

from morty.api.models import Runtime, RuntimeList
from morty.api.routes.deps import AUTHENTICATED
from morty.api.runtimes import RUNTIMES

router = APIRouter(prefix="/v1/runtimes", tags=["runtimes"], **AUTHENTICATED)


@router.get("", response_model=RuntimeList)
async def list_runtimes() -> RuntimeList:
    return RuntimeList(items=[Runtime.model_validate(r) for r in sorted(RUNTIMES.values(), key=lambda r: r.name)])
