"""Secrets: set, list (names only), delete; encrypted at rest; decryptable only for the orchestrator."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
from sqlalchemy import select

from morty.api import store
from morty.api.tables import SecretRow
from tests.morty.api.conftest import create_function

PLAINTEXT = "s3cr3t-Value-that-must-not-leak"


async def test_secrets_are_encrypted_at_rest_and_never_returned(api: httpx.AsyncClient, data_dir: Path) -> None:
    await create_function(api, "hello")
    created = await api.put("/v1/functions/hello/secrets/DB_PASSWORD", json={"value": PLAINTEXT})
    assert created.status_code == 201, created.text
    assert set(created.json()) == {"name", "created_at", "updated_at"}
    replaced = await api.put("/v1/functions/hello/secrets/DB_PASSWORD", json={"value": PLAINTEXT + "2"})
    assert replaced.status_code == 200
    await api.put("/v1/functions/hello/secrets/API_KEY", json={"value": "other"})

    responses = [
        await api.get("/v1/functions/hello/secrets"),
        await api.get("/v1/functions/hello"),
        await api.get("/v1/functions"),
    ]
    for response in responses:
        assert PLAINTEXT not in response.text
    assert [s["name"] for s in responses[0].json()["items"]] == ["API_KEY", "DB_PASSWORD"]
    assert responses[1].json()["secrets"] == ["API_KEY", "DB_PASSWORD"]

    morty = api.app.state.morty  # type: ignore[attr-defined]
    async with morty.db.read() as session:
        rows = (await session.scalars(select(SecretRow))).all()
        assert len(rows) == 2
        for row in rows:
            assert PLAINTEXT.encode() not in row.ciphertext and b"other" not in row.ciphertext
        # Only the orchestrator-facing store call decrypts.
        assert await store.secret_values(session, morty.box, "hello") == {
            "DB_PASSWORD": PLAINTEXT + "2",
            "API_KEY": "other",
        }
    if morty.db.is_sqlite:
        files = list(data_dir.parent.glob("state.db*"))
        assert files, "the SQLite database and its WAL are where the test expects them"
        for path in files:
            assert PLAINTEXT.encode() not in path.read_bytes(), path

    key_file = data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert (await api.delete("/v1/functions/hello/secrets/API_KEY")).status_code == 204
    assert (await api.delete("/v1/functions/hello/secrets/API_KEY")).status_code == 404
    assert [s["name"] for s in (await api.get("/v1/functions/hello/secrets")).json()["items"]] == ["DB_PASSWORD"]


async def test_secret_names_and_clashes(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello", env={"MODE": "prod"})
    bad = await api.put("/v1/functions/hello/secrets/not-a-var", json={"value": "x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "key"
    clash = await api.put("/v1/functions/hello/secrets/MODE", json={"value": "x"})
    assert clash.status_code == 409 and "env" in clash.json()["error"]
    await api.put("/v1/functions/hello/secrets/TOKEN", json={"value": "x"})
    env_clash = await api.patch("/v1/functions/hello", json={"env": {"TOKEN": "plain"}})
    assert env_clash.status_code == 409 and "TOKEN" in env_clash.json()["error"]
    assert (await api.put("/v1/functions/nope/secrets/X", json={"value": "x"})).status_code == 404
    missing_value = await api.put("/v1/functions/hello/secrets/X", json={})
    assert missing_value.status_code == 422 and missing_value.json()["detail"][0]["field"] == "value"
