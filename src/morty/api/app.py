"""Morty APIs' ASGI application: routers, error mapping, metrics, health, and start-up work
(migrations, keys, handing queued builds to the build queue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from morty import __version__
from morty.api import keys, store
from morty.api.builds import BuildQueue, NoBuilderQueue
from morty.api.database import Database
from morty.api.deployer import Deployer, DeploySettings
from morty.api.gateway import Gateway, GatewayError, GatewaySettings
from morty.api.instance_logs import InstanceLogs
from morty.api.instances import Instances, Placed, ScalingSettings
from morty.api.routes import (
    aliases,
    builds,
    errors,
    functions,
    invocations,
    runtimes,
    secrets,
    uploads,
    versions,
)
from morty.api.routes import gateway as gateway_routes
from morty.api.routes import instances as instance_routes
from morty.api.routes import logs as log_routes
from morty.api.routes.deps import MortyState
from morty.api.settings import Settings
from morty.builder.queue import Builder, BuilderSettings
from morty.orchestrators.base import Orchestrator
from morty.storage.base import CodeStore
from morty.storage.local import LocalCodeStore
from morty.storage.s3 import S3CodeStore
from morty.storage.signing import UploadSigner

log = logging.getLogger(__name__)
REQUESTS = Counter("morty_api_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("morty_api_request_seconds", "HTTP request latency", ["method", "route"])


class _Metrics:
    """Counts requests by route template (not raw path, which would explode the label set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "(unmatched)")
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - started)


def make_code_store(settings: Settings, master: bytes) -> CodeStore:
    if settings.code_store == "local":
        signer = UploadSigner(keys.derive(master, "upload-urls"))
        return LocalCodeStore(settings.data_dir / "code", signer, settings.public_url)
    if settings.code_store == "s3":
        if not settings.s3_bucket:
            raise ValueError("the S3 code store needs a bucket (MORTY_S3_BUCKET / --s3-bucket)")
        return S3CodeStore(
            settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint, region=settings.s3_region
        )
    raise ValueError(f"unknown code store {settings.code_store!r}; expected local or s3")


GATEWAY_SYNC_INTERVAL = 30.0


def _attach_gateway(gateway: Gateway, instances: Instances, deployer: Deployer) -> None:
    """Instances become targets once ready and leave the gateway before they stop; a ready version gets its
    routes; the gateway's in-flight counts are the scaler's load."""

    async def register(placed: Placed) -> None:
        await gateway.add_target(placed.key, placed.host, placed.port, placed.instance_id, placed.start_path)

    async def drain(placed: Placed) -> None:
        await gateway.remove_target(placed.key, placed.host, placed.port)

    async def load() -> dict[str, int]:
        per_address: dict[str, int] = {}
        for targets in (await gateway.in_flight()).values():
            for address, count in targets.items():
                per_address[address] = per_address.get(address, 0) + count
        return per_address

    async def move(before: Placed, after: Placed) -> None:
        await gateway.add_target(after.key, after.host, after.port, after.instance_id, after.start_path)
        await gateway.remove_target(before.key, before.host, before.port)

    instances.after_start.append(register)
    instances.before_stop.insert(0, drain)
    instances.after_gone.append(drain)
    instances.after_move.append(move)
    instances.load = load
    deployer.on_ready.append(gateway.sync_function_soon)


async def _sync_gateway(gateway: Gateway) -> None:
    """Every `GATEWAY_SYNC_INTERVAL`; every 2 s while the gateway does not answer (e.g. it starts after us)."""
    while True:
        try:
            await gateway.sync_all()
            delay = GATEWAY_SYNC_INTERVAL
        except GatewayError as exc:
            log.warning("gateway sync failed: %s", exc)
            delay = 2.0
        await asyncio.sleep(delay)


def create_app(
    settings: Settings,
    *,
    build_queue: BuildQueue | None = None,
    code_store: CodeStore | None = None,
    orchestrator: Orchestrator | None = None,
) -> FastAPI:
    """With an `orchestrator`, built versions are deployed through it and instances can be asked for."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    master = keys.master_key(settings.secret_key, settings.data_dir)
    db = Database(settings.database)
    box = keys.SecretBox(keys.derive(master, "secrets"))
    code_store = code_store or make_code_store(settings, master)
    token = keys.management_token(settings.token, settings.data_dir)
    deployer: Deployer | None = None
    instances: Instances | None = None
    instance_logs: InstanceLogs | None = None
    if orchestrator is not None:
        deployer = Deployer(
            db,
            box,
            orchestrator,
            DeploySettings(
                timeout=settings.deploy_timeout, snapshots=settings.snapshots, vm_unavailable=settings.vm_unavailable
            ),
        )
        instances = Instances(
            db,
            orchestrator,
            ScalingSettings(
                provision_timeout=settings.provision_timeout,
                tick=settings.scaling_tick,
                reconcile_interval=settings.reconcile_interval,
            ),
        )
        deployer.before_redeploy.append(instances.stop_version)
        instances.deploying = deployer.deploying
        instance_logs = InstanceLogs(db, box)
        collect = instance_logs.collect

        async def collect_before_stop(placed: Placed) -> None:
            await collect(placed.instance_id)

        instances.before_stop.append(collect_before_stop)
    gateway: Gateway | None = None
    if settings.gateway_url and instances is not None and deployer is not None:
        if not settings.gateway_token:
            raise ValueError("the gateway's management token is needed (MORTY_GATEWAY_TOKEN)")
        gateway = Gateway(
            db,
            GatewaySettings(
                admin_url=settings.gateway_url,
                token=settings.gateway_token,
                provision_url=settings.gateway_provision_url or f"{settings.public_url}/v1/provision",
                provision_token=token,
                provision_timeout_s=settings.provision_timeout,
                api_address=urlsplit(settings.public_url).netloc or None,
            ),
        )
        _attach_gateway(gateway, instances, deployer)
    builder: Builder | None = None
    if build_queue is None and settings.registry:
        builder = Builder(
            db,
            code_store,
            BuilderSettings(
                registry=settings.registry,
                cache_dir=settings.build_cache_dir,
                work_dir=settings.data_dir / "builds",
                concurrency=settings.build_concurrency,
                archive_limits=settings.archive_limits,
            ),
            box,
            on_built=deployer.enqueue if deployer is not None else None,
        )
        build_queue = builder
    morty = MortyState(
        settings=settings,
        db=db,
        box=box,
        code_store=code_store,
        build_queue=build_queue or NoBuilderQueue(),
        token=token,
        orchestrator=orchestrator,
        deployer=deployer,
        instances=instances,
        logs=instance_logs,
        gateway=gateway,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await db.migrate()
        async with db.transaction() as session:
            queued = await store.requeue_interrupted_builds(session)
        for build_id in queued:
            await morty.build_queue.enqueue(build_id)
        deploying = await deployer.resume() if deployer is not None else 0
        if instances is not None:
            instances.start()
        syncing = asyncio.create_task(_sync_gateway(gateway)) if gateway is not None else None
        log.info(
            "Morty APIs ready",
            extra={
                "code_store": settings.code_store,
                "queued_builds": len(queued),
                "resumed_deployments": deploying,
                "orchestrator": type(orchestrator).__name__ if orchestrator else None,
                "public_url": settings.public_url,
            },
        )
        try:
            yield
        finally:
            if syncing is not None:
                syncing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await syncing
            if instances is not None:
                await instances.close()
            if gateway is not None:
                await gateway.close()
            if deployer is not None:
                await deployer.close()
            if instance_logs is not None:
                await instance_logs.close()
            if builder is not None:
                await builder.close()
            await db.close()

    app = FastAPI(
        title="Morty APIs",
        version=__version__,
        description=(
            "Functions, versions, aliases, builds and invocation records of Morty, a self-hosted "
            "Functions-as-a-Service platform. Every route under /v1 needs `Authorization: Bearer <token>`, "
            "except the pre-signed upload URLs."
        ),
        lifespan=lifespan,
    )
    app.state.morty = morty
    errors.install(app)
    for module in (
        functions,
        secrets,
        versions,
        uploads,
        aliases,
        builds,
        instance_routes,
        log_routes,
        invocations,
        gateway_routes,
        runtimes,
    ):
        app.include_router(module.router)

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        async with db.read() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__, "code_store": settings.code_store}

    @app.get("/metrics", tags=["meta"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    errors.document(app)
    app.add_middleware(_Metrics)
    return app
