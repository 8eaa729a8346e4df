"""`LocalCodeStore`: objects are files under a directory; uploads go to Morty's own
`PUT /v1/uploads/{token}`, authorised by an HMAC-signed token (`signing.py`).

The upload handler streams the body into a staging file (`receive`), which is published under its
key (`publish`, an atomic rename) once the upload has been recorded, or discarded otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from morty.storage.base import CodeStore, ObjectInfo, UploadTarget, check_key
from morty.storage.signing import UploadSigner


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Staged:
    path: Path
    size: int
    sha256: str


class LocalCodeStore(CodeStore):
    signals_uploads = True

    def __init__(self, root: Path, signer: UploadSigner, public_url: str) -> None:
        self.root = root
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self._staging = root / ".staging"
        self._staging.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def upload_target(self, key: str, *, expires_in: float, max_bytes: int) -> UploadTarget:
        token, grant = self.signer.sign(check_key(key), expires_in=expires_in, max_bytes=max_bytes)
        return UploadTarget(
            url=f"{self.public_url}/v1/uploads/{token}",
            expires_at=grant.expires,
            max_bytes=max_bytes,
            headers={"Content-Type": "application/octet-stream"},
        )

    async def receive(self, chunks: AsyncIterable[bytes], max_bytes: int) -> Staged:
        """Write an upload to a new staging file, stopping with `TooLarge` past `max_bytes`."""
        path = self._staging / uuid.uuid4().hex
        digest = hashlib.sha256()
        size = 0
        try:
            with path.open("xb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise TooLarge(max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Staged(path=path, size=size, sha256=digest.hexdigest())

    def publish(self, staged: Staged, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.path, target)

    def discard(self, staged: Staged) -> None:
        staged.path.unlink(missing_ok=True)

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            return ObjectInfo(key=key, size=self.path(key).stat().st_size)
        except FileNotFoundError:
            return None

    async def download(self, key: str, destination: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, self.path(key), destination)

    async def delete(self, key: str) -> None:
        path = self.path(key)
        path.unlink(missing_ok=True)
        # Remove directories the key left empty, up to the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
