"""`/v1/functions`: create, list, get, update configuration, delete."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from morty.api import store
from morty.api.errors import Invalid, Unavailable
from morty.api.models import Function, FunctionCreate, FunctionDeleted, FunctionList, FunctionPatch, Isolation
from morty.api.routes.deps import AUTHENTICATED, Morty, errors
from morty.builder.registry import BuildError, delete_image
from morty.orchestrators.base import OrchestratorError

DEPLOYED_FIELDS = {"env", "memory_mib", "vcpus", "isolation"}
"""Fields baked into a deployment: changing one redeploys the function's versions (their running instances stop,
drained first; new ones start on demand with the new configuration)."""
router = APIRouter(prefix="/v1/functions", tags=["functions"], **AUTHENTICATED)
log = logging.getLogger(__name__)


def _check_isolation(isolation: Isolation | None, vm_unavailable: str) -> None:
    """A function that asks for a VM is refused rather than run in a container: it asked for the stronger boundary."""
    if isolation == Isolation.VM and vm_unavailable:
        raise Invalid.field(
            "isolation", f"VMs are not available on this platform ({vm_unavailable}); use isolation `container`"
        )


@router.post("", status_code=201, response_model=Function, responses=errors(409, 422))
async def create_function(request: FunctionCreate, morty: Morty) -> Function:
    """Isolation left out: `vm`, or `container` where the platform cannot run VMs."""
    vm_unavailable = morty.settings.vm_unavailable
    if "isolation" in request.model_fields_set:
        _check_isolation(request.isolation, vm_unavailable)
    elif vm_unavailable:
        request = request.model_copy(update={"isolation": Isolation.CONTAINER})
    async with morty.db.transaction() as session:
        function = await store.create_function(session, request)
    log.info("function created", extra={"function": function.name, "runtime": function.runtime})
    return function


@router.get("", response_model=FunctionList)
async def list_functions(morty: Morty) -> FunctionList:
    async with morty.db.read() as session:
        return FunctionList(items=await store.list_functions(session))


@router.get("/{name}", response_model=Function, responses=errors(404))
async def get_function(name: str, morty: Morty) -> Function:
    async with morty.db.read() as session:
        return await store.get_function(session, name)


@router.patch("/{name}", response_model=Function, responses=errors(404, 409, 422))
async def update_function(name: str, patch: FunctionPatch, morty: Morty) -> Function:
    """Change configuration fields; those left out keep their value."""
    _check_isolation(patch.isolation, morty.settings.vm_unavailable)
    async with morty.db.transaction() as session:
        function = await store.update_function(session, name, patch)
    if patch.model_fields_set & DEPLOYED_FIELDS:
        await morty.config_changed(name)
    await morty.routes_changed(name)
    log.info("function updated", extra={"function": name, "fields": sorted(patch.model_fields_set)})
    return function


@router.delete("/{name}", response_model=FunctionDeleted, responses=errors(404, 503))
async def delete_function(name: str, morty: Morty) -> FunctionDeleted:
    """Delete the function and everything it has: its instances and its versions in the orchestrator first
    (if the orchestrator cannot, nothing is deleted: 503, retry), then its secrets, versions, aliases,
    builds, invocation records, code archives and function images."""
    async with morty.db.read() as session:
        function = await store.function_row(session, name)
        deployed = await store.deployment_keys(session, function.id)
        images = await store.version_images(session, function.id)
    if morty.instances is not None:
        await morty.instances.stop_all(function.id, name)
    if morty.orchestrator is not None:
        for key in deployed:
            try:
                await morty.orchestrator.unregister(key)
            except OrchestratorError as exc:
                raise Unavailable(
                    f"could not remove {name} from the orchestrator: {exc.reason}: {exc.message}"
                ) from None
    async with morty.db.transaction() as session:
        deleted, keys = await store.delete_function(session, name)
    await morty.routes_changed(name)
    for key in keys:
        try:
            await morty.code_store.delete(key)
        except Exception:
            log.warning("could not delete a code object", extra={"function": name, "key": key}, exc_info=True)
    for image, digest in images:
        try:
            await delete_image(image, digest)
        except BuildError as exc:
            log.warning("could not delete an image: %s", exc.message, extra={"function": name, "image": image})
    log.info("function deleted", extra={"function": name, **deleted.model_dump(exclude={"name"})})
    return deleted
