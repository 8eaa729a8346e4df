"""Keys: the master key (setting `MORTY_SECRET_KEY`, or a key file created 0600 on first start),
the keys derived from it (HKDF-SHA256, one per purpose), secrets encryption (AES-256-GCM) and the
management token.

A secret is stored as `0x01 | nonce (12 bytes) | ciphertext+tag`, authenticated with the function
and secret name as associated data, so a ciphertext copied to another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_FORMAT = b"\x01"


class KeyMaterialError(Exception):
    """A key setting or key file is unusable."""


def _read_or_create(path: Path, make: bytes) -> bytes:
    """Read `path`, or create it with `make` (mode 0600, never overwriting a concurrent creator)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(make + b"\n")
    return make


def _decode_key(text: str, origin: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise KeyMaterialError(f"{origin}: not base64") from None
    if len(key) != 32:
        raise KeyMaterialError(f"{origin}: must be 32 bytes (base64url), got {len(key)}")
    return key


def master_key(setting: str | None, data_dir: Path) -> bytes:
    if setting:
        return _decode_key(setting, "MORTY_SECRET_KEY")
    path = data_dir / "secret.key"
    fresh = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=")
    return _decode_key(_read_or_create(path, fresh).decode(), str(path))


def management_token(setting: str | None, data_dir: Path) -> str:
    if setting:
        return setting
    token = _read_or_create(data_dir / "token", secrets.token_urlsafe(32).encode()).decode()
    if not token:
        raise KeyMaterialError(f"{data_dir / 'token'} is empty")
    return token


def derive(master: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=f"morty/{purpose}".encode()).derive(master)


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def encrypt(self, plaintext: str, context: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return _FORMAT + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, blob: bytes, context: str) -> str:
        if blob[:1] != _FORMAT or len(blob) < 1 + 12 + 16:
            raise KeyMaterialError("secret has an unknown format")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], context.encode()).decode()
        except InvalidTag:
            raise KeyMaterialError("secret does not decrypt with this key (was MORTY_SECRET_KEY changed?)") from None
