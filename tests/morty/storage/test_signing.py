"""HMAC-signed upload tokens."""

from __future__ import annotations

import pytest

from morty.storage.signing import ExpiredToken, ForgedToken, UploadSigner

KEY = b"k" * 32


def test_a_token_round_trips_until_it_expires() -> None:
    now = [1_000_000.0]
    signer = UploadSigner(KEY, clock=lambda: now[0])
    token, grant = signer.sign("fn/abc.archive", expires_in=60, max_bytes=1024)
    assert signer.verify(token) == grant
    assert (grant.key, grant.expires_at, grant.max_bytes) == ("fn/abc.archive", 1_000_060, 1024)
    now[0] += 60
    with pytest.raises(ExpiredToken, match="expired at"):
        signer.verify(token)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: ("e" if t[0] != "e" else "f") + t[1:],  # payload changed
        lambda t: t.split(".")[0],  # signature removed
        lambda t: t + ".x",
        lambda t: "",
        lambda t: "%2e%2e/" + t,
    ],
)
def test_altered_tokens_are_forged(mangle: object) -> None:
    signer = UploadSigner(KEY)
    token, _ = signer.sign("fn/abc.archive", expires_in=60, max_bytes=1024)
    with pytest.raises(ForgedToken, match="signature does not match"):
        signer.verify(mangle(token))  # type: ignore[operator]


def test_a_token_from_another_key_is_forged_even_when_expired() -> None:
    token, _ = UploadSigner(b"x" * 32).sign("fn/abc.archive", expires_in=-10, max_bytes=1)
    with pytest.raises(ForgedToken):
        UploadSigner(KEY).verify(token)


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        UploadSigner(b"short")
