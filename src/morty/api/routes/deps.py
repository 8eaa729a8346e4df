"""Objects the handlers share (reached through the application state) and the bearer-token check."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from morty.api import store
from morty.api.builds import BuildQueue
from morty.api.database import Database
from morty.api.deployer import Deployer
from morty.api.errors import Unauthorized
from morty.api.gateway import Gateway
from morty.api.instance_logs import InstanceLogs
from morty.api.instances import Instances
from morty.api.keys import SecretBox
from morty.api.models import ErrorBody
from morty.api.settings import Settings
from morty.orchestrators.base import Orchestrator
from morty.storage.base import CodeStore

log = logging.getLogger(__name__)


@dataclass
class MortyState:
    settings: Settings
    db: Database
    box: SecretBox
    code_store: CodeStore
    build_queue: BuildQueue
    token: str
    orchestrator: Orchestrator | None = None
    deployer: Deployer | None = None
    instances: Instances | None = None
    logs: InstanceLogs | None = None
    gateway: Gateway | None = None

    async def config_changed(self, function: str) -> None:
        """Redeploy the function's versions with its current configuration (in the background)."""
        if self.deployer is None:
            return
        async with self.db.read() as session:
            row = await store.function_row(session, function)
        count = await self.deployer.redeploy_function(row.id)
        log.info("configuration changed; redeploying", extra={"function": function, "versions": count})

    async def routes_changed(self, function: str) -> None:
        """Bring the gateway's routes of `function` up to date; on failure the periodic sync catches up."""
        if self.gateway is not None:
            await self.gateway.sync_function_soon(function)


def state(request: Request) -> MortyState:
    morty: MortyState = request.app.state.morty
    return morty


Morty = Annotated[MortyState, Depends(state)]

_bearer = HTTPBearer(auto_error=False, description="The management token (`MORTY_TOKEN`).")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    if credentials is None:
        raise Unauthorized("authentication required: send the header 'Authorization: Bearer <token>' (MORTY_TOKEN)")
    if not hmac.compare_digest(credentials.credentials.encode(), state(request).token.encode()):
        raise Unauthorized("invalid bearer token")


AUTHENTICATED: dict[str, Any] = {
    "dependencies": [Depends(require_token)],
    "responses": {401: {"model": ErrorBody, "description": "missing or invalid bearer token"}},
}
"""Keyword arguments for an `APIRouter` whose routes all need the management token."""


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}
