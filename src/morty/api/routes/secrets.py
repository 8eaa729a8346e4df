"""`/v1/functions/{name}/secrets`: set and delete secrets; list their names. Values are stored
encrypted and never returned."""

from __future__ import annotations

from fastapi import APIRouter, Response

from morty.api import store
from morty.api.models import Secret, SecretList, SecretValue
from morty.api.routes.deps import AUTHENTICATED, Morty, errors

router = APIRouter(prefix="/v1/functions/{name}/secrets", tags=["secrets"], **AUTHENTICATED)


@router.get("", response_model=SecretList, responses=errors(404))
async def list_secrets(name: str, morty: Morty) -> SecretList:
    async with morty.db.read() as session:
        return SecretList(items=await store.list_secrets(session, name))


@router.put("/{key}", response_model=Secret, responses={**errors(404, 409, 422), 201: {"model": Secret}})
async def put_secret(name: str, key: str, request: SecretValue, morty: Morty, response: Response) -> Secret:
    """Set a secret (201 when new, 200 when replaced). It reaches the function as an environment variable; the
    function's deployed versions are redeployed with it."""
    async with morty.db.transaction() as session:
        secret, created = await store.put_secret(session, morty.box, name, key, request.value)
    await morty.config_changed(name)
    response.status_code = 201 if created else 200
    return secret


@router.delete("/{key}", status_code=204, response_class=Response, responses=errors(404))
async def delete_secret(name: str, key: str, morty: Morty) -> Response:
    async with morty.db.transaction() as session:
        await store.delete_secret(session, name, key)
    await morty.config_changed(name)
    return Response(status_code=204)
