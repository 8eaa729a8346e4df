"""The controller's ASGI application: API routers, metrics, health, schema, and the leader loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rik import __version__
from rik.controller import store
from rik.controller.api import errors, instances, nodes, snapshots, watch, workloads
from rik.controller.api.deps import ControllerState
from rik.controller.database import Database
from rik.controller.leader import LeaderLoop, LeaderSettings
from rik.model import WorkloadManifest


@dataclass(frozen=True)
class ControllerSettings:
    database_url: str = "sqlite:////var/lib/rik/controller.db"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    node_timeout: float = 15.0
    lease_ttl: float = 10.0
    instance_cidr: str = "10.88.0.0/16"
    node_prefix: int = 24


def workload_schema() -> dict[str, Any]:
    schema = WorkloadManifest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "/api/v1/schemas/workload"
    return schema


def create_app(settings: ControllerSettings) -> FastAPI:
    db = Database(settings.database_url)
    leader = LeaderLoop(
        db,
        LeaderSettings(identity=settings.identity, lease_ttl=settings.lease_ttl, node_timeout=settings.node_timeout),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.migrate()
        async with httpx.AsyncClient() as http:
            app.state.controller = ControllerState(
                db=db,
                leader=leader,
                instance_pool=IPv4Network(settings.instance_cidr),
                node_prefix=settings.node_prefix,
                http=http,
            )
            task = asyncio.create_task(leader.run(), name="leader-loop")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await db.close()

    app = FastAPI(
        title="RIK controller",
        version=__version__,
        description="RIK schedules containers (Pod) and virtual machines (VM) across worker nodes.",
        lifespan=lifespan,
    )
    errors.install(app)
    for module in (workloads, instances, nodes, snapshots, watch):
        app.include_router(module.router)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        async with db.read() as session:
            rv = await store.current_resource_version(session)
        return {
            "status": "ok",
            "leader": leader.is_leader,
            "identity": settings.identity,
            "resource_version": rv,
        }

    @app.get("/metrics", tags=["meta"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/schemas/workload", tags=["meta"])
    async def schema() -> JSONResponse:
        return JSONResponse(workload_schema())

    errors.document(app)

    return app
