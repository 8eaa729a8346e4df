"""`Gateway`: Morty's side of the API gateway, spoken over the gateway's management API (HTTP, token).

What Morty keeps there, per function (`sync_function`, after every change that moves a route, and for all
functions periodically, so a gateway that lost its configuration or a missed call converges):

- a service per deployed version, `fn.<deployment key>` (an upstream pool whose targets are the version's
  instances, labelled with the instance id and how it started);
- routes `fn.<name>` (`/fn/<name>`, the latest version), `fn.<name>@<version>` for each ready version and
  `fn.<name>@<alias>` for each alias, each pointing at its version's service, with the function's timeout and
  a provisioner hook: Morty's `POST /v1/provision`, which the gateway calls once per route when a request finds
  no target.

Instances register as targets when they are ready and are removed from the gateway before they stop (the
gateway drains them). The gateway's in-flight counts per target feed the scaler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import select

from morty.api.database import Database
from morty.api.models import VersionStatus, parse_version
from morty.api.tables import AliasRow, FunctionRow, VersionRow

log = logging.getLogger(__name__)
PREFIX = "/fn"


@dataclass(frozen=True)
class GatewaySettings:
    admin_url: str
    token: str
    provision_url: str
    """Morty's `POST /v1/provision`, as the gateway reaches it."""
    provision_token: str
    provision_timeout_s: float = 120.0
    api_address: str | None = None
    """Morty APIs' `host:port` as the gateway reaches it: the gateway forwards `/v1` there (management traffic
    goes through the gateway; Morty checks the token itself)."""


class GatewayError(Exception):
    pass


def service_name(deployment_key: str) -> str:
    return f"fn.{deployment_key}"


def route_name(function: str, ref: str | None = None) -> str:
    return f"fn.{function}" if ref is None else f"fn.{function}@{ref}"


@dataclass(frozen=True)
class _Wanted:
    routes: dict[str, dict[str, Any]]
    services: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class _Published:
    """The gateway's routes and services as it lists them."""

    routes: list[dict[str, Any]]
    services: list[dict[str, Any]]

    def of_function(self, kind: str, name: str) -> list[dict[str, Any]]:
        items = self.routes if kind == "routes" else self.services
        return [item for item in items if item["spec"].get("labels", {}).get("function") == name]

    def functions(self) -> set[str]:
        labels = (item["spec"].get("labels") or {} for item in [*self.routes, *self.services])
        return {str(label["function"]) for label in labels if label.get("function")}


class Gateway:
    def __init__(self, db: Database, settings: GatewaySettings) -> None:
        self._db = db
        self.settings = settings
        self._http = httpx.AsyncClient(
            base_url=settings.admin_url.rstrip("/"),
            headers={"Authorization": f"Bearer {settings.token}"},
            timeout=10,
            trust_env=False,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        try:
            response = await self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise GatewayError(f"the gateway is unreachable: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 400 and not (method == "DELETE" and response.status_code == 404):
            raise GatewayError(
                f"the gateway answered {method} {path} with {response.status_code}: {response.text[:300]}"
            )
        return response

    # Targets ---------------------------------------------------------------------------------------------------

    async def add_target(self, deployment_key: str, host: str, port: int, instance_id: str, start_path: str) -> None:
        labels = {"instance": instance_id, "start_path": start_path}
        await self._call("POST", f"/v1/services/{service_name(deployment_key)}/targets",
                         {"address": f"{host}:{port}", "labels": labels})  # fmt: skip

    async def remove_target(self, deployment_key: str, host: str, port: int) -> None:
        address = quote(f"{host}:{port}", safe="")
        await self._call("DELETE", f"/v1/services/{service_name(deployment_key)}/targets/{address}")

    async def in_flight(self) -> dict[str, dict[str, int]]:
        """In-flight requests per service and target address, summed over the gateway's workers."""
        stats = (await self._call("GET", "/v1/stats")).json()
        return {
            service: {address: int(entry.get("in_flight", 0)) for address, entry in targets.items()}
            for service, targets in stats.get("targets", {}).items()
        }

    # Routes ----------------------------------------------------------------------------------------------------

    async def _desired(self, name: str) -> _Wanted:
        """The routes and services function `name` should have: none if it is gone or has no ready version."""
        async with self._db.read() as session:
            function = await session.scalar(select(FunctionRow).where(FunctionRow.name == name))
            versions: list[VersionRow] = []
            aliases: list[tuple[str, str]] = []
            if function is not None:
                versions = list(
                    (
                        await session.scalars(
                            select(VersionRow).where(
                                VersionRow.function_id == function.id,
                                VersionRow.status == VersionStatus.READY.value,
                                VersionRow.deployment_key.is_not(None),
                            )
                        )
                    ).all()
                )
                aliases = [
                    (alias, version_id)
                    for alias, version_id in await session.execute(
                        select(AliasRow.name, AliasRow.version_id).where(AliasRow.function_id == function.id)
                    )
                ]
        wanted_routes: dict[str, dict[str, Any]] = {}
        wanted_services: dict[str, dict[str, Any]] = {}
        if function is not None and versions:
            by_id = {v.id: v for v in versions}
            latest = max(versions, key=lambda v: parse_version(v.version))
            for version in versions:
                assert version.deployment_key is not None
                wanted_services[service_name(version.deployment_key)] = {
                    "policy": "least_in_flight",
                    "read_timeout_s": function.timeout_seconds,
                    "labels": {"function": name, "version": version.version},
                }
            refs: list[tuple[str | None, VersionRow]] = [(None, latest)]
            refs += [(v.version, v) for v in versions]
            refs += [(alias, by_id[version_id]) for alias, version_id in aliases if version_id in by_id]
            for ref, version in refs:
                assert version.deployment_key is not None
                path = f"{PREFIX}/{name}" if ref is None else f"{PREFIX}/{name}@{ref}"
                wanted_routes[route_name(name, ref)] = {
                    "service": service_name(version.deployment_key),
                    "path_prefix": path,
                    "strip_prefix": True,
                    "read_timeout_s": function.timeout_seconds,
                    "provisioner": {
                        "url": self.settings.provision_url,
                        "token": self.settings.provision_token,
                        "timeout_s": self.settings.provision_timeout_s,
                    },
                    "labels": {"function": name, "version": version.version, "ref": ref or "latest"},
                }
        return _Wanted(routes=wanted_routes, services=wanted_services)

    async def _published(self) -> _Published:
        routes = (await self._call("GET", "/v1/routes")).json()["items"]
        services = (await self._call("GET", "/v1/services")).json()["items"]
        return _Published(routes=routes, services=services)

    async def _apply(self, name: str, published: _Published) -> None:
        wanted = await self._desired(name)
        for service, spec in wanted.services.items():
            await self._call("PUT", f"/v1/services/{service}", spec)
        for route, spec in wanted.routes.items():
            await self._call("PUT", f"/v1/routes/{quote(route, safe='')}", spec)
        for stale in published.of_function("routes", name):
            if stale["name"] not in wanted.routes:
                await self._call("DELETE", f"/v1/routes/{quote(stale['name'], safe='')}")
        for stale in published.of_function("services", name):
            if stale["name"] not in wanted.services:
                await self._call("DELETE", f"/v1/services/{quote(stale['name'], safe='')}")
        log.debug("gateway synced", extra={"function": name, "routes": sorted(wanted.routes)})

    async def sync_function(self, name: str) -> None:
        """Make the gateway's routes and services of function `name` match its versions and aliases (or remove
        them all if the function is gone). Re-putting an unchanged spec costs the gateway nothing."""
        await self._apply(name, await self._published())
        log.info("gateway synced", extra={"function": name})

    async def sync_function_soon(self, name: str) -> None:
        """`sync_function`, leaving a failure to the periodic sync (logged, not raised)."""
        try:
            await self.sync_function(name)
        except GatewayError as exc:
            log.warning("gateway not updated; the periodic sync will retry: %s", exc, extra={"function": name})

    async def publish_api(self) -> None:
        if self.settings.api_address is None:
            return
        await self._call("PUT", "/v1/services/morty.api", {"policy": "round_robin", "read_timeout_s": 600})
        await self._call("POST", "/v1/services/morty.api/targets", {"address": self.settings.api_address})
        await self._call(
            "PUT", "/v1/routes/morty.api",
            {"service": "morty.api", "path_prefix": "/v1", "priority": 10, "read_timeout_s": 600},
        )  # fmt: skip

    async def sync_all(self) -> None:
        """Every function, listing the gateway's configuration once per pass; functions deleted while the
        gateway was unreachable lose their routes here."""
        await self.publish_api()
        async with self._db.read() as session:
            names = set((await session.scalars(select(FunctionRow.name))).all())
        published = await self._published()
        names |= published.functions()
        for name in sorted(names):
            await self._apply(name, published)
