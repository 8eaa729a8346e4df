"""Invocation records: batches from the gateway, listing newest first with pagination and filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.morty.api.conftest import create_function

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def record(n: int, status: int = 200, function: str = "hello", **extra: Any) -> dict[str, Any]:
    started = T0 + timedelta(seconds=n)
    return {
        "id": f"req-{function}-{n}",
        "function": function,
        "version": "1.0.0",
        "status": status,
        "started_at": started.isoformat(),
        "finished_at": (started + timedelta(milliseconds=120)).isoformat(),
        "queue_ms": 1.5,
        "provision_ms": 450.0 if n == 0 else 0.0,
        "upstream_ms": 12.0,
        "path": "restored" if n == 0 else "warm",
        "instance": "hello-1-abc",
        "bytes_in": 10,
        "bytes_out": 200,
    } | extra


async def test_a_batch_is_stored_once_and_listed_newest_first(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    batch = [record(n, status=503 if n % 3 == 0 else 200) for n in range(7)] + [record(0, function="ghost")]
    result = await api.post("/v1/invocations:batch", json={"records": batch})
    assert result.status_code == 200, result.text
    assert result.json() == {"accepted": 7, "duplicates": 0, "unknown_functions": ["ghost"]}
    resent = await api.post("/v1/invocations:batch", json={"records": batch[:3]})
    assert resent.json() == {"accepted": 0, "duplicates": 3, "unknown_functions": []}

    page = (await api.get("/v1/functions/hello/invocations", params={"limit": 3})).json()
    assert [i["id"] for i in page["items"]] == ["req-hello-6", "req-hello-5", "req-hello-4"]
    first = page["items"][0]
    assert first["duration_ms"] == 120.0 and first["path"] == "warm" and first["instance"] == "hello-1-abc"
    seen = [i["id"] for i in page["items"]]
    while page["next_cursor"]:
        page = (
            await api.get("/v1/functions/hello/invocations", params={"limit": 3, "cursor": page["next_cursor"]})
        ).json()
        seen += [i["id"] for i in page["items"]]
    assert seen == [f"req-hello-{n}" for n in range(6, -1, -1)]
    oldest = (await api.get("/v1/functions/hello/invocations", params={"limit": 1, "cursor": None})).json()
    assert oldest["items"][0]["id"] == "req-hello-6"

    failures = (await api.get("/v1/functions/hello/invocations", params={"status": "5xx"})).json()["items"]
    assert [i["id"] for i in failures] == ["req-hello-6", "req-hello-3", "req-hello-0"]
    assert failures[-1]["path"] == "restored" and failures[-1]["provision_ms"] == 450.0
    exact = (await api.get("/v1/functions/hello/invocations", params={"status": "200"})).json()["items"]
    assert len(exact) == 4
    bad_filter = await api.get("/v1/functions/hello/invocations", params={"status": "fail"})
    assert bad_filter.status_code == 422 and bad_filter.json()["detail"][0]["field"] == "status"
    bad_cursor = await api.get("/v1/functions/hello/invocations", params={"cursor": "bm9wZQ"})
    assert bad_cursor.status_code == 422 and bad_cursor.json()["detail"][0]["field"] == "cursor"
    assert (await api.get("/v1/functions/ghost/invocations")).status_code == 404


async def test_invalid_records_are_refused_with_the_field(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")

    async def refused(**changes: Any) -> list[str]:
        response = await api.post("/v1/invocations:batch", json={"records": [record(1) | changes]})
        assert response.status_code == 422, response.text
        return [d["field"] for d in response.json()["detail"]]

    assert await refused(path="teleported") == ["records.0.path"]
    assert await refused(status=99) == ["records.0.status"]
    assert await refused(queue_ms=-1) == ["records.0.queue_ms"]
    assert await refused(started_at="2026-01-01T12:00:00") == ["records.0.started_at"], "naive timestamps"
    assert await refused(finished_at=(T0 - timedelta(seconds=1)).isoformat()) == ["records.0"]
    assert await refused(function="Not A Name") == ["records.0.function"]
    empty = await api.post("/v1/invocations:batch", json={"records": []})
    assert empty.status_code == 422
    listed = (await api.get("/v1/functions/hello/invocations")).json()
    assert listed == {"items": [], "next_cursor": None}
