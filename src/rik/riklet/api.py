"""The riklet's own HTTP API: health, metrics, and instance logs (the controller proxies to it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rik import __version__
from rik.riklet.agent import Agent

FOLLOW_POLL = 0.3


def create_app(agent: Agent) -> FastAPI:
    app = FastAPI(title="riklet", version=__version__, description="RIK's node agent.")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok" if agent.ready.is_set() else "starting",
            "node": agent.settings.name,
            "runtimes": agent.runtimes,
            "unavailable": agent.unavailable,
            "instances": len(agent.runners),
        }

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/instances")
    async def instances() -> list[dict[str, Any]]:
        return [
            {
                "id": runner.id,
                "driver": runner.driver.name,
                "phase": runner.phase.value if runner.phase else None,
                "address": runner.handle.address if runner.handle else None,
            }
            for runner in agent.runners.values()
        ]

    @app.get("/v1/instances/{instance_id}/logs", response_class=StreamingResponse)
    async def logs(
        instance_id: str,
        tail_bytes: Annotated[int | None, Query(ge=0)] = None,
        follow: bool = False,
    ) -> StreamingResponse:
        runner = agent.runners.get(instance_id)
        if runner is None or runner.handle is None:
            raise HTTPException(404, f"instance {instance_id!r} is not running on node {agent.settings.name}")
        handle, driver = runner.handle, runner.driver
        first = await driver.logs(handle, tail_bytes)

        async def stream() -> AsyncIterator[bytes]:
            yield first
            if not follow:
                return
            sent = len(await driver.logs(handle, None))
            while agent.runners.get(instance_id) is runner:
                await asyncio.sleep(FOLLOW_POLL)
                data = await driver.logs(handle, None)
                if len(data) > sent:
                    yield data[sent:]
                    sent = len(data)

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    return app
