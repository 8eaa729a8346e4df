"""Bad input gets a 4xx that names the problem."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from tests.rik.controller.conftest import manifest


def broken(path: str, value: Any) -> dict[str, Any]:
    body = manifest()
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    target[last] = value
    return body


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (broken("kind", "Deployment"), "kind", "'Pod' or 'VM'"),
        (broken("metadata.name", "x" * 53), "metadata.name", "at most 52"),
        (broken("metadata.name", "Not_A_DNS_Label"), "metadata.name", "pattern"),
        (broken("spec.replicas", "3"), "spec.replicas", "must be an integer, not str"),
        (broken("spec.replicas", 1.5), "spec.replicas", "fractional part"),
        (broken("spec.resources.memory", 0), "spec.resources.memory", "greater than or equal to 1"),
        (broken("spec.image", ""), "spec.image", "at least 1"),
        (broken("spec.ports", [{"port": 70000}]), "spec.ports.0.port", "less than or equal to 65535"),
        (broken("spec.env", {"1BAD": "x"}), "spec.env.1BAD.[key]", "pattern"),
        (broken("spec.imagePullPolicy", "Always"), "spec.imagePullPolicy", "Extra inputs"),
        (broken("apiVersion", "v2"), "apiVersion", "rik/v1"),
    ],
)
async def test_invalid_manifests_name_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = await api.post("/api/v1/workloads", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert field in [d["field"] for d in payload["detail"]], payload
    assert words in payload["error"]


async def test_malformed_json_is_a_400_class_error(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/workloads", content=b'{"kind": "Pod", ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "malformed JSON" in response.json()["error"]


async def test_url_and_body_names_must_agree(api: httpx.AsyncClient) -> None:
    response = await api.put("/api/v1/workloads/other", json=manifest("web"))
    assert response.status_code == 422
    assert "does not match" in response.json()["error"]


async def test_unknown_objects_are_404(api: httpx.AsyncClient) -> None:
    for path in ("/api/v1/workloads/nope", "/api/v1/instances/nope", "/api/v1/nodes/nope"):
        response = await api.get(path)
        assert response.status_code == 404
        assert "nope" in response.json()["error"]


async def test_the_published_schema_accepts_and_rejects_like_the_api(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/api/v1/schemas/workload")).json()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(manifest())
    assert not validator.is_valid(broken("kind", "Deployment"))
    assert not validator.is_valid(broken("spec.replicas", "3"))
    assert not validator.is_valid(broken("spec.unknown", 1))
