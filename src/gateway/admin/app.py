"""The management API application. Every route but the health checks requires `Authorization: Bearer
<token>`. Writes go to the database and return the new `resource_version`; workers apply them from the
change stream within milliseconds, and `GET /v1/sync?resource_version=N` waits until they all have."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field

from gateway.admin.provisioner import Provisioner
from gateway.admin.schemas import (
    Deleted,
    Health,
    RouteList,
    RouteRecord,
    RouteStats,
    ServiceList,
    ServiceRecord,
    Stats,
    Synced,
    TargetList,
    TargetRecord,
    TargetStats,
    WorkerStatus,
    route_record,
    service_record,
    target_record,
)
from gateway.admin.watch import change_stream
from gateway.admin.workers import WorkerMetrics, WorkerRegistry
from gateway.errors import GatewayError
from gateway.model import NAME_PATTERN, RouteSpec, ServiceSpec, TargetSpec
from gateway.store.database import GatewayDatabase

NamePath = Annotated[str, Path(pattern=NAME_PATTERN)]
AddressPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}:[0-9]{1,5}$")]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed request body"},
    401: {"description": "missing or invalid token"},
    404: {"description": "not found"},
    409: {"description": "conflict"},
    422: {"description": "invalid input; `detail` names the field"},
}


_BEARER = HTTPBearer(auto_error=False)


class ProvisionRequest(BaseModel):
    route: str = Field(pattern=NAME_PATTERN)


def create_app(
    db: GatewayDatabase,
    token: str,
    *,
    workers: WorkerRegistry | None = None,
    migrate: bool = True,
) -> FastAPI:
    registry = workers or WorkerRegistry(expected=0)
    provisioner = Provisioner(db)
    metrics = CollectorRegistry()
    metrics.register(WorkerMetrics(registry))

    async def authorised(credentials: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> None:
        # async: a plain def dependency would cost a thread-pool hop on every call.
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or invalid token", headers={"WWW-Authenticate": "Bearer"})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if migrate:
            await db.migrate()
        yield
        await provisioner.close()

    app = FastAPI(title="Gateway management API", version="1", lifespan=lifespan)
    app.state.provisioner = provisioner
    app.state.workers = registry

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        body: dict[str, Any] = {"detail": exc.message}
        if exc.field:
            body["detail"] = [{"loc": ["body", exc.field], "msg": exc.message, "type": "reference"}]
        return JSONResponse(body, status_code=exc.status)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok", workers_ready=registry.ready_count(), workers_expected=registry.expected)

    @app.get("/readyz", response_model=Health, responses={503: {"description": "workers not ready"}}, tags=["health"])
    async def readyz() -> Any:
        ready = registry.applied(await db.resource_version())
        health = Health(
            status="ok" if ready else "starting",
            workers_ready=registry.ready_count(),
            workers_expected=registry.expected,
        )
        return health if ready else JSONResponse(health.model_dump(), status_code=503)

    api = APIRouter(prefix="/v1", dependencies=[Depends(authorised)], responses=ERRORS)

    # Services

    @api.put(
        "/services/{name}",
        response_model=ServiceRecord,
        responses={201: {"model": ServiceRecord, "description": "created"}},
        tags=["services"],
    )
    async def put_service(name: NamePath, spec: ServiceSpec, response: Response) -> ServiceRecord:
        stored, created = await db.put("service", name, spec.model_dump(mode="json"))
        response.status_code = 201 if created else 200
        return service_record(stored)

    @api.get("/services", response_model=ServiceList, tags=["services"])
    async def list_services() -> ServiceList:
        rv = await db.resource_version()
        return ServiceList(items=[service_record(s) for s in await db.list_objects("service")], resource_version=rv)

    @api.get("/services/{name}", response_model=ServiceRecord, tags=["services"])
    async def get_service(name: NamePath) -> ServiceRecord:
        return service_record(await db.get("service", name))

    @api.delete("/services/{name}", response_model=Deleted, tags=["services"])
    async def delete_service(name: NamePath) -> Deleted:
        return Deleted(kind="service", name=name, resource_version=await db.delete("service", name))

    # Targets

    @api.post(
        "/services/{name}/targets",
        response_model=TargetRecord,
        status_code=201,
        responses={200: {"model": TargetRecord, "description": "already registered: updated"}},
        tags=["targets"],
    )
    async def add_target(name: NamePath, spec: TargetSpec, response: Response) -> TargetRecord:
        stored, created = await db.put("target", f"{name}/{spec.address}", spec.model_dump(mode="json"))
        provisioner.target_added(name)
        response.status_code = 201 if created else 200
        return target_record(stored)

    @api.get("/services/{name}/targets", response_model=TargetList, tags=["targets"])
    async def list_targets(name: NamePath) -> TargetList:
        await db.get("service", name)
        rv = await db.resource_version()
        items = [target_record(t) for t in await db.list_objects("target", prefix=f"{name}/")]
        return TargetList(items=items, resource_version=rv)

    @api.delete("/services/{name}/targets/{address}", response_model=Deleted, tags=["targets"])
    async def remove_target(name: NamePath, address: AddressPath) -> Deleted:
        key = f"{name}/{address}"
        return Deleted(kind="target", name=key, resource_version=await db.delete("target", key))

    # Routes

    @api.put(
        "/routes/{name}",
        response_model=RouteRecord,
        responses={201: {"model": RouteRecord, "description": "created"}},
        tags=["routes"],
    )
    async def put_route(name: NamePath, spec: RouteSpec, response: Response) -> RouteRecord:
        stored, created = await db.put("route", name, spec.model_dump(mode="json"))
        response.status_code = 201 if created else 200
        return route_record(stored)

    @api.get("/routes", response_model=RouteList, tags=["routes"])
    async def list_routes() -> RouteList:
        rv = await db.resource_version()
        return RouteList(items=[route_record(r) for r in await db.list_objects("route")], resource_version=rv)

    @api.get("/routes/{name}", response_model=RouteRecord, tags=["routes"])
    async def get_route(name: NamePath) -> RouteRecord:
        return route_record(await db.get("route", name))

    @api.delete("/routes/{name}", response_model=Deleted, tags=["routes"])
    async def delete_route(name: NamePath) -> Deleted:
        return Deleted(kind="route", name=name, resource_version=await db.delete("route", name))

    # Change stream, sync, stats

    @api.get(
        "/watch",
        tags=["watch"],
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON change events"}},
    )
    async def watch(since: Annotated[int | None, Query(ge=0, le=2**62)] = None) -> StreamingResponse:
        return StreamingResponse(change_stream(db, since), media_type="application/x-ndjson")

    @api.get("/sync", response_model=Synced, responses={504: {"description": "not applied in time"}}, tags=["watch"])
    async def sync(
        resource_version: Annotated[int | None, Query(ge=0, le=2**62)] = None,
        timeout_s: Annotated[float, Query(gt=0, le=60)] = 5.0,
    ) -> Any:
        target = resource_version if resource_version is not None else await db.resource_version()
        if not await registry.wait_applied(target, timeout_s):
            return JSONResponse({"detail": f"workers did not apply version {target} in time"}, status_code=504)
        return Synced(resource_version=target, workers=len(registry.live()))

    @api.get("/stats", response_model=Stats, tags=["stats"])
    async def stats() -> Stats:
        routes, targets = registry.in_flight()
        from time import monotonic

        now = monotonic()
        return Stats(
            workers=[
                WorkerStatus(
                    worker=str(report["worker"]),
                    pid=int(report["pid"]),
                    ready=bool(report["ready"]),
                    resource_version=int(report["resource_version"]),
                    seconds_since_report=round(now - at, 3),
                )
                for at, report in registry.reports.values()
            ],
            routes={name: RouteStats(**entry) for name, entry in routes.items()},
            targets={
                service: {
                    address: TargetStats(in_flight=count, usable=usable) for address, (count, usable) in entries.items()
                }
                for service, entries in targets.items()
            },
        )

    app.include_router(api)

    @app.get("/metrics", dependencies=[Depends(authorised)], response_class=Response, tags=["health"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    internal = APIRouter(prefix="/internal", dependencies=[Depends(authorised)], include_in_schema=False)

    @internal.post("/report")
    async def report(body: dict[str, Any]) -> dict[str, bool]:
        registry.record(body)
        return {"ok": True}

    @internal.post("/provision")
    async def provision(body: ProvisionRequest) -> JSONResponse:
        ok, message = await provisioner.provision(body.route)
        return JSONResponse({"ok": ok, "detail": message}, status_code=200 if ok else 502)

    app.include_router(internal)
    return app
