"""A typed async client for the controller's HTTP API, used by rikctl, the riklet and other programs.

ClientError            any failure talking to the controller
 ├── ApiError          the controller answered 4xx/5xx; `.status` and `.message` say what
 │    └── WatchExpired the watch resumed from history that was compacted (410): list again
 └── Unreachable       no answer (connection refused, timeout)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from rik.model import (
    Instance,
    InstanceList,
    InstanceStatusReport,
    Node,
    NodeList,
    NodeRegistration,
    Snapshot,
    SnapshotList,
    SnapshotStatusReport,
    WatchEvent,
    Workload,
    WorkloadList,
    WorkloadManifest,
)

log = logging.getLogger(__name__)


class ClientError(Exception):
    pass


class ApiError(ClientError):
    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail


class WatchExpired(ApiError):
    pass


class Unreachable(ClientError):
    pass


class RikClient:
    """`base_url` may list several controllers sharing one database, comma-separated: a request that cannot
    connect to one goes to the next, and a watch that breaks resumes on the next."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, transport: httpx.AsyncBaseTransport | None = None):
        self.urls = [url.strip().rstrip("/") for url in base_url.split(",") if url.strip()] or [""]
        self.base_url = ",".join(self.urls)
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    @property
    def current_url(self) -> str:
        return self.urls[self._current]

    def _fail_over(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def __aenter__(self) -> RikClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # Plumbing -----------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(len(self.urls)):
            url = self.current_url
            try:
                response = await self._http.request(method, url + path, **kwargs)
                break
            except httpx.TransportError as exc:
                self._fail_over()
                # Only a request that never reached a controller is safe to send to another one.
                if attempt + 1 == len(self.urls) or not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    raise Unreachable(f"controller at {url} did not answer: {exc!r}") from exc
        if response.status_code >= 400:
            raise _api_error(response.status_code, response.content)
        return response

    # Workloads ----------------------------------------------------------------------------------------

    async def create_workload(self, manifest: WorkloadManifest | dict[str, Any]) -> Workload:
        response = await self._request("POST", "/api/v1/workloads", json=_manifest_json(manifest))
        return Workload.model_validate_json(response.content)

    async def apply_workload(self, manifest: WorkloadManifest | dict[str, Any]) -> tuple[Workload, bool]:
        """Create or update; returns (workload, created)."""
        body = _manifest_json(manifest)
        name = body.get("metadata", {}).get("name", "") if isinstance(body.get("metadata"), dict) else ""
        response = await self._request("PUT", f"/api/v1/workloads/{name}", json=body)
        return Workload.model_validate_json(response.content), response.status_code == 201

    async def list_workloads(self, selector: str | None = None) -> WorkloadList:
        params = {"selector": selector} if selector else {}
        response = await self._request("GET", "/api/v1/workloads", params=params)
        return WorkloadList.model_validate_json(response.content)

    async def get_workload(self, name: str) -> Workload:
        response = await self._request("GET", f"/api/v1/workloads/{name}")
        return Workload.model_validate_json(response.content)

    async def scale_workload(self, name: str, replicas: int) -> Workload:
        response = await self._request("PATCH", f"/api/v1/workloads/{name}/scale", json={"replicas": replicas})
        return Workload.model_validate_json(response.content)

    async def delete_workload(self, name: str) -> Workload:
        response = await self._request("DELETE", f"/api/v1/workloads/{name}")
        return Workload.model_validate_json(response.content)

    # Instances ----------------------------------------------------------------------------------------

    async def list_instances(
        self, *, workload: str | None = None, node: str | None = None, phase: str | None = None
    ) -> InstanceList:
        params = {k: v for k, v in {"workload": workload, "node": node, "phase": phase}.items() if v}
        response = await self._request("GET", "/api/v1/instances", params=params)
        return InstanceList.model_validate_json(response.content)

    async def get_instance(self, instance_id: str) -> Instance:
        response = await self._request("GET", f"/api/v1/instances/{instance_id}")
        return Instance.model_validate_json(response.content)

    async def delete_instance(self, instance_id: str, *, scale_down: bool = False) -> Instance:
        params = {"scale_down": "true"} if scale_down else {}
        response = await self._request("DELETE", f"/api/v1/instances/{instance_id}", params=params)
        return Instance.model_validate_json(response.content)

    async def report_status(self, instance_id: str, report: InstanceStatusReport) -> Instance | None:
        """None when the report completed the instance's deletion."""
        response = await self._request(
            "PUT", f"/api/v1/instances/{instance_id}/status", json=report.model_dump(mode="json")
        )
        if response.status_code == 204:
            return None
        return Instance.model_validate_json(response.content)

    async def logs(
        self, instance_id: str, *, tail_bytes: int | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        params: dict[str, str] = {"follow": "true" if follow else "false"}
        if tail_bytes is not None:
            params["tail_bytes"] = str(tail_bytes)
        try:
            async with self._http.stream(
                "GET",
                f"{self.current_url}/api/v1/instances/{instance_id}/logs",
                params=params,
                timeout=httpx.Timeout(10, read=None if follow else 30),
            ) as response:
                if response.status_code >= 400:
                    raise _api_error(response.status_code, await response.aread())
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            self._fail_over()
            raise Unreachable(f"controller at {self.base_url} did not answer: {exc!r}") from exc

    async def pause_instance(self, instance_id: str) -> Instance:
        response = await self._request("POST", f"/api/v1/instances/{instance_id}/pause")
        return Instance.model_validate_json(response.content)

    async def resume_instance(self, instance_id: str) -> Instance:
        response = await self._request("POST", f"/api/v1/instances/{instance_id}/resume")
        return Instance.model_validate_json(response.content)

    # Snapshots ----------------------------------------------------------------------------------------

    async def snapshot_instance(self, instance_id: str, name: str) -> Snapshot:
        response = await self._request("POST", f"/api/v1/instances/{instance_id}/snapshots", json={"name": name})
        return Snapshot.model_validate_json(response.content)

    async def list_snapshots(self, *, workload: str | None = None, node: str | None = None) -> SnapshotList:
        params = {k: v for k, v in {"workload": workload, "node": node}.items() if v}
        response = await self._request("GET", "/api/v1/snapshots", params=params)
        return SnapshotList.model_validate_json(response.content)

    async def get_snapshot(self, name: str) -> Snapshot:
        response = await self._request("GET", f"/api/v1/snapshots/{name}")
        return Snapshot.model_validate_json(response.content)

    async def delete_snapshot(self, name: str) -> Snapshot:
        response = await self._request("DELETE", f"/api/v1/snapshots/{name}")
        return Snapshot.model_validate_json(response.content)

    async def report_snapshot(self, name: str, report: SnapshotStatusReport) -> Snapshot | None:
        """None when the report completed the snapshot's deletion."""
        response = await self._request("PUT", f"/api/v1/snapshots/{name}/status", json=report.model_dump(mode="json"))
        if response.status_code == 204:
            return None
        return Snapshot.model_validate_json(response.content)

    # Nodes --------------------------------------------------------------------------------------------

    async def register_node(self, registration: NodeRegistration) -> Node:
        response = await self._request("POST", "/api/v1/nodes", json=registration.model_dump(mode="json"))
        return Node.model_validate_json(response.content)

    async def heartbeat(self, name: str) -> Node:
        response = await self._request("POST", f"/api/v1/nodes/{name}/heartbeat")
        return Node.model_validate_json(response.content)

    async def list_nodes(self) -> NodeList:
        response = await self._request("GET", "/api/v1/nodes")
        return NodeList.model_validate_json(response.content)

    async def get_node(self, name: str) -> Node:
        response = await self._request("GET", f"/api/v1/nodes/{name}")
        return Node.model_validate_json(response.content)

    async def delete_node(self, name: str) -> Node:
        response = await self._request("DELETE", f"/api/v1/nodes/{name}")
        return Node.model_validate_json(response.content)

    # Watch --------------------------------------------------------------------------------------------

    async def watch(
        self,
        *,
        since: int,
        resources: str | None = None,
        node: str | None = None,
        workload: str | None = None,
        reconnect_delay: float = 0.5,
    ) -> AsyncIterator[WatchEvent]:
        """Yield change events after `since`, forever. A dropped stream or a restarting controller is
        resumed from the last version seen; BOOKMARK lines only move that version forward."""
        cursor = since
        params = {k: v for k, v in {"resources": resources, "node": node, "workload": workload}.items() if v}
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    f"{self.current_url}/api/v1/watch",
                    params={**params, "since": str(cursor)},
                    timeout=httpx.Timeout(10, read=60),
                ) as response:
                    if response.status_code == 410:
                        raise WatchExpired(410, _message(await response.aread()))
                    if response.status_code >= 400:
                        raise _api_error(response.status_code, await response.aread())
                    async for line in response.aiter_lines():
                        if not line.strip():
                            continue
                        raw = json.loads(line)
                        cursor = max(cursor, int(raw["resource_version"]))
                        if raw["type"] == "BOOKMARK":
                            continue
                        yield WatchEvent.model_validate(raw)
            except (httpx.TransportError, httpx.StreamError, json.JSONDecodeError) as exc:
                log.info("watch interrupted; resuming", extra={"since": cursor, "error": repr(exc)})
                self._fail_over()
            await asyncio.sleep(reconnect_delay)


def _manifest_json(manifest: WorkloadManifest | dict[str, Any]) -> dict[str, Any]:
    if isinstance(manifest, WorkloadManifest):
        return manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    return manifest


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500] or "(empty answer)"
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return str(parsed)[:500]


def _api_error(status: int, body: bytes) -> ApiError:
    detail = None
    try:
        parsed = json.loads(body)
        detail = parsed.get("detail") if isinstance(parsed, dict) else None
    except ValueError:
        pass
    cls = WatchExpired if status == 410 else ApiError
    return cls(status, _message(body), detail)
