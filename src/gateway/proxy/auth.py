"""Per-route request authentication: API keys in a header, or a JWT bearer token (HS256, or RS256 with
keys from a JWKS URL fetched off the hot path).

`check()` answers synchronously with None (allowed) or `(status, message)`; for a JWT signed by a key
not yet fetched it answers with an awaitable that resolves once the JWKS has been refreshed."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable
from time import monotonic
from typing import Any

import httpx
import jwt

from gateway.model import ApiKeyAuth, AuthSpec, JwtAuth

log = logging.getLogger(__name__)
Denial = tuple[int, str]
JWKS_MIN_REFRESH_S = 10.0


class Authenticator:
    def check(self, headers: dict[bytes, bytes]) -> Denial | None | Awaitable[None]:
        raise NotImplementedError


def make_authenticator(spec: AuthSpec) -> Authenticator | None:
    if isinstance(spec, ApiKeyAuth):
        return ApiKeyAuthenticator(spec)
    if isinstance(spec, JwtAuth):
        return JwtAuthenticator(spec)
    return None


class ApiKeyAuthenticator(Authenticator):
    def __init__(self, spec: ApiKeyAuth) -> None:
        self.header = spec.header.lower().encode()
        self.keys = [key.encode() for key in spec.keys]

    def check(self, headers: dict[bytes, bytes]) -> Denial | None:
        given = headers.get(self.header)
        if given is None:
            return 401, f"missing API key (header {self.header.decode()})"
        # Compare against every key in constant time so timing tells nothing about which one is close.
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return None if ok else (403, "invalid API key")


class JwtAuthenticator(Authenticator):
    def __init__(self, spec: JwtAuth) -> None:
        self.spec = spec
        self.keys: dict[str, Any] = {}
        self._fetched_at = -JWKS_MIN_REFRESH_S
        self._refresh: asyncio.Task[None] | None = None
        if spec.jwks_url:
            self._start_refresh()

    def check(self, headers: dict[bytes, bytes]) -> Denial | None | Awaitable[None]:
        value = headers.get(b"authorization")
        if value is None or value[:7].lower() != b"bearer ":
            return 401, "missing bearer token"
        token = value[7:].strip().decode("latin-1")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            return 401, "malformed token"
        algorithm = header.get("alg")
        if algorithm not in self.spec.algorithms:
            return 401, f"token algorithm {algorithm!r} is not accepted"
        if algorithm == "HS256":
            key: Any = self.spec.secret
        else:
            key = self.keys.get(header.get("kid", ""))
            if key is None:
                if self._refresh is not None and not self._refresh.done():
                    return asyncio.shield(self._refresh)
                if monotonic() - self._fetched_at >= JWKS_MIN_REFRESH_S:
                    return asyncio.shield(self._start_refresh())
                return 401, "token signed by an unknown key"
        try:
            jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.spec.audience,
                issuer=self.spec.issuer,
                leeway=self.spec.leeway_s,
                options={"verify_aud": self.spec.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return 401, "token expired"
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            return 403, "token not valid for this route (audience or issuer)"
        except jwt.InvalidTokenError as exc:
            return 401, f"invalid token: {exc}"
        return None

    def _start_refresh(self) -> asyncio.Task[None]:
        self._fetched_at = monotonic()
        self._refresh = asyncio.get_running_loop().create_task(self._fetch())
        return self._refresh

    async def _fetch(self) -> None:
        assert self.spec.jwks_url is not None
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                response = await client.get(self.spec.jwks_url)
                response.raise_for_status()
                document = response.json()
            keys = {}
            for entry in document.get("keys", []):
                if entry.get("kty") == "RSA" and "kid" in entry:
                    keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256").key
            self.keys = keys
        except (httpx.HTTPError, json.JSONDecodeError, jwt.PyJWKError, ValueError) as exc:
            log.warning("JWKS fetch failed", extra={"url": self.spec.jwks_url, "error": str(exc)})
