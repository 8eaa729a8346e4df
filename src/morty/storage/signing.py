"""HMAC-SHA256-signed upload tokens: an object key, a size limit and an expiry, tamper-proof.

A token is `<payload>.<signature>`, both base64url without padding; the payload is compact JSON
`{"k": key, "e": expiry (unix seconds), "n": max bytes}`. The signature covers a domain prefix and
the encoded payload, and is checked in constant time before anything in the payload is trusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

_DOMAIN = b"morty-upload-v1."
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,2048}\.[A-Za-z0-9_-]{43}")


class TokenError(Exception):
    """The token does not authorise an upload. `message` says why, for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ForgedToken(TokenError):
    pass


class ExpiredToken(TokenError):
    pass


@dataclass(frozen=True)
class UploadGrant:
    key: str
    expires_at: int
    max_bytes: int

    @property
    def expires(self) -> datetime:
        return datetime.fromtimestamp(self.expires_at, UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadSigner:
    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the upload signing key must be at least 32 bytes")
        self._key = key
        self._clock = clock

    def _signature(self, payload: str) -> bytes:
        return hmac.new(self._key, _DOMAIN + payload.encode(), hashlib.sha256).digest()

    def sign(self, key: str, *, expires_in: float, max_bytes: int) -> tuple[str, UploadGrant]:
        grant = UploadGrant(key=key, expires_at=int(self._clock() + expires_in), max_bytes=max_bytes)
        payload = _b64(json.dumps({"k": grant.key, "e": grant.expires_at, "n": grant.max_bytes}).encode())
        return f"{payload}.{_b64(self._signature(payload))}", grant

    def verify(self, token: str) -> UploadGrant:
        forged = ForgedToken(
            "upload URL is invalid: its signature does not match (altered, or not issued by this Morty)"
        )
        if not _TOKEN.fullmatch(token):
            raise forged
        payload, signature = token.split(".")
        try:
            given = _unb64(signature)
        except (binascii.Error, ValueError):
            raise forged from None
        if not hmac.compare_digest(given, self._signature(payload)):
            raise forged
        try:
            fields = json.loads(_unb64(payload))
            grant = UploadGrant(key=str(fields["k"]), expires_at=int(fields["e"]), max_bytes=int(fields["n"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise forged from None
        if self._clock() >= grant.expires_at:
            raise ExpiredToken(
                f"upload URL expired at {grant.expires.isoformat()}; ask Morty for a new one "
                "(POST /v1/functions/{name}/versions/{version}/upload-url)"
            )
        return grant
