"""Calls a route's provisioner hook, once per route however many requests and workers are waiting.

While a call is running, every caller awaits the same call. After a call succeeds, further requests for
the route within its `timeout_s` are told "already provisioning" without a second call, until a target
is registered for the route's service (the provisioning reached its goal)."""

from __future__ import annotations

import asyncio
import logging
from time import monotonic

import httpx

from gateway.errors import NotFound
from gateway.model import RouteSpec
from gateway.store.database import GatewayDatabase

log = logging.getLogger(__name__)


class Provisioner:
    def __init__(self, db: GatewayDatabase) -> None:
        self.db = db
        self.calls: dict[str, int] = {}
        self._running: dict[str, asyncio.Task[tuple[bool, str]]] = {}
        self._recent: dict[str, tuple[float, str]] = {}
        self._added: dict[str, int] = {}
        """Targets registered per service so far: a hook that registers its target before it answers must not
        leave its route marked "already provisioning"."""
        self._http = httpx.AsyncClient()

    async def close(self) -> None:
        await self._http.aclose()

    async def provision(self, route: str) -> tuple[bool, str]:
        task = self._running.get(route)
        if task is None:
            recent = self._recent.get(route)
            if recent is not None and recent[0] > monotonic():
                return True, "already provisioning"
            # Registered before any await, so concurrent callers find it and share it.
            task = asyncio.get_running_loop().create_task(self._call(route))
            self._running[route] = task
            task.add_done_callback(lambda _: self._running.pop(route, None))
        return await asyncio.shield(task)

    def target_added(self, service: str) -> None:
        self._added[service] = self._added.get(service, 0) + 1
        for route, (_, route_service) in list(self._recent.items()):
            if route_service == service:
                del self._recent[route]

    async def _call(self, route: str) -> tuple[bool, str]:
        try:
            spec = RouteSpec.model_validate((await self.db.get("route", route))["spec"])
        except NotFound:
            return False, f"route {route!r} does not exist"
        hook = spec.provisioner
        if hook is None:
            return False, f"route {route!r} has no provisioner"
        self.calls[route] = self.calls.get(route, 0) + 1
        headers = {"authorization": f"Bearer {hook.token}"} if hook.token else {}
        body = {"route": route, "service": spec.service, "labels": spec.labels}
        added_before = self._added.get(spec.service, 0)
        log.info("calling provisioner", extra={"route": route, "url": hook.url})
        try:
            response = await self._http.post(hook.url, json=body, headers=headers, timeout=hook.timeout_s)
        except httpx.HTTPError as exc:
            log.warning("provisioner unreachable", extra={"route": route, "error": repr(exc)})
            return False, f"provisioner unreachable ({exc.__class__.__name__})"
        if not response.is_success:
            log.warning("provisioner refused", extra={"route": route, "status": response.status_code})
            return False, f"provisioner answered {response.status_code}"
        if self._added.get(spec.service, 0) == added_before:  # its target is still to come
            self._recent[route] = (monotonic() + hook.timeout_s, spec.service)
        return True, ""
