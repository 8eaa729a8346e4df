"""Per-route authentication in the data plane: API keys, JWT HS256, JWT RS256 with keys from a JWKS URL."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from tests.gateway.helpers import data_plane
from tests.support.registry import free_tcp_port
from tests.support.services import served

pytestmark = pytest.mark.timeout(30)
SECRET = "an-hs256-secret-that-is-32-bytes-long!"


async def test_api_key() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url) as client:
        plane.route("default", auth={"type": "api_key", "header": "X-Api-Key", "keys": ["key-one-123", "key-two-456"]})
        missing = await client.get("/")
        assert missing.status_code == 401 and "missing API key" in missing.json()["error"]
        assert (await client.get("/", headers={"x-api-key": "nope-nope"})).status_code == 403
        assert (await client.get("/", headers={"x-api-key": "key-two-456"})).status_code == 200


async def test_jwt_hs256() -> None:
    async with data_plane() as plane, httpx.AsyncClient(base_url=plane.url) as client:
        plane.route("default", auth={"type": "jwt", "secret": SECRET, "audience": "morty"})
        now = int(time.time())

        def bearer(claims: dict[str, object], key: str = SECRET) -> dict[str, str]:
            return {"authorization": "Bearer " + jwt.encode(claims, key, algorithm="HS256")}

        assert (await client.get("/", headers=bearer({"aud": "morty", "exp": now + 60}))).status_code == 200
        missing = await client.get("/")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        expired = await client.get("/", headers=bearer({"aud": "morty", "exp": now - 60}))
        assert expired.status_code == 401 and expired.json()["error"] == "token expired"
        forged = await client.get("/", headers=bearer({"aud": "morty"}, key="another-secret-of-32-bytes-or-more!!"))
        assert forged.status_code == 401
        assert (await client.get("/", headers=bearer({"aud": "other", "exp": now + 60}))).status_code == 403
        assert (await client.get("/", headers={"authorization": "Bearer not.a.jwt"})).status_code == 401
        assert (await client.get("/", headers={"authorization": "Basic abc"})).status_code == 401


async def test_jwt_rs256_with_jwks() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = FastAPI()
    fetches: list[int] = []

    @jwks.get("/jwks.json")
    async def keys() -> dict[str, object]:
        fetches.append(1)
        return {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}

    port = free_tcp_port()
    async with served(jwks, port), data_plane() as plane, httpx.AsyncClient(base_url=plane.url) as client:
        plane.route(
            "default", auth={"type": "jwt", "algorithms": ["RS256"], "jwks_url": f"http://127.0.0.1:{port}/jwks.json"}
        )
        now = int(time.time())

        def bearer(claims: dict[str, object], kid: str = "k1") -> dict[str, str]:
            return {"authorization": "Bearer " + jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})}

        assert (await client.get("/", headers=bearer({"exp": now + 60}))).status_code == 200
        assert (await client.get("/", headers=bearer({"exp": now - 60}))).status_code == 401
        assert (await client.get("/", headers=bearer({"exp": now + 60}, kid="unknown"))).status_code == 401
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = {"authorization": "Bearer " + jwt.encode({}, other, algorithm="RS256", headers={"kid": "k1"})}
        assert (await client.get("/", headers=forged)).status_code == 401
        hs = {"authorization": "Bearer " + jwt.encode({}, SECRET, algorithm="HS256")}
        assert (await client.get("/", headers=hs)).status_code == 401
        assert len(fetches) <= 2
