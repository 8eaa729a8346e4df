"""What the API gateway calls: `POST /v1/provision` (its provisioner hook: a route has no target) and
`POST /v1/gateway/records` (its invocation records, in the gateway's own generic shape)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, ValidationError

from morty.api import store
from morty.api.errors import Conflict, Invalid
from morty.api.models import BatchResult, Instance, InvocationBatch, InvocationPath, InvocationRecord
from morty.api.routes.deps import AUTHENTICATED, Morty, errors

router = APIRouter(prefix="/v1", tags=["gateway"], **AUTHENTICATED)
log = logging.getLogger(__name__)
START_PATHS = {p.value for p in InvocationPath}


class ProvisionRequest(BaseModel):
    route: Annotated[str, Field(max_length=256)]
    service: Annotated[str, Field(max_length=256)] = ""
    labels: dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, max_length=64
    )


class GatewayRecords(BaseModel):
    records: Annotated[list[dict[str, Any]], Field(max_length=1000)]


@router.post("/provision", response_model=Instance, responses=errors(404, 409, 422, 429, 503))
async def provision(request: ProvisionRequest, morty: Morty) -> Instance:
    """Start an instance of the route's version (labels `function` and `version`) and register it with the
    gateway as a target of the route's service; answers once the gateway has it."""
    function, version = request.labels.get("function"), request.labels.get("version")
    if not function or not version:
        raise Invalid.field("labels", "a function route carries the labels `function` and `version`")
    if morty.instances is None:
        raise Conflict("Morty APIs run without an orchestrator (start them with --rik-url): no instance can run")
    instance = await morty.instances.provision(function, version)
    log.info("provisioned for the gateway", extra={"route": request.route, "instance": instance.id})
    return instance


def _record(raw: dict[str, Any]) -> InvocationRecord | None:
    labels = raw.get("route_labels") or {}
    if not isinstance(labels, dict) or "function" not in labels:
        return None  # a route that is not a function's
    target_labels = raw.get("target_labels") or {}
    start = str(raw.get("start") or "warm")
    return InvocationRecord.model_validate(
        {
            "id": raw.get("id"),
            "function": labels["function"],
            "version": labels.get("version"),
            "status": raw.get("status"),
            "started_at": raw.get("started_at"),
            "finished_at": raw.get("finished_at"),
            "queue_ms": raw.get("queue_ms", 0.0),
            "provision_ms": raw.get("provision_ms", 0.0),
            "upstream_ms": raw.get("upstream_ms", 0.0),
            "path": start if start in START_PATHS else "booted",
            "instance": target_labels.get("instance") if isinstance(target_labels, dict) else None,
            "bytes_in": raw.get("bytes_in", 0),
            "bytes_out": raw.get("bytes_out", 0),
        }
    )


@router.post("/gateway/records", response_model=BatchResult, responses=errors(422))
async def gateway_records(batch: GatewayRecords, morty: Morty) -> BatchResult:
    """Store the records of function routes (others are ignored); a malformed record is dropped and logged,
    the rest of its batch stored."""
    records: list[InvocationRecord] = []
    for raw in batch.records:
        try:
            record = _record(raw)
        except ValidationError as exc:
            log.warning("malformed gateway record dropped: %s", exc.errors()[:1], extra={"id": str(raw.get("id"))[:64]})
            continue
        if record is not None:
            records.append(record)
    if not records:
        return BatchResult(accepted=0, duplicates=0, unknown_functions=[])
    async with morty.db.transaction() as session:
        result = await store.record_invocations(session, InvocationBatch(records=records))
    if morty.instances is not None:
        await morty.instances.touch_records(records)
    return result
