"""`S3CodeStore`: objects in an S3 bucket (or any S3-compatible service), uploads by pre-signed PUT.

boto3 is imported on first use, so Morty runs without it when the local store is used; selecting
this store without boto3 installed fails with a `CodeStoreError` that says so. S3 cannot tell Morty
about an upload by itself here: the client confirms it (`POST .../upload-confirm`) and Morty checks
the object with `stat`. A pre-signed PUT cannot enforce a size limit; the builder checks the size.
"""

from __future__ import annotations

import asyncio
import importlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from morty.storage.base import CodeStore, CodeStoreError, ObjectInfo, UploadTarget, check_key


class S3CodeStore(CodeStore):
    signals_uploads = False

    def __init__(
        self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._s3: Any = None

    def _client(self) -> Any:
        if self._s3 is None:
            try:
                boto3 = importlib.import_module("boto3")
            except ImportError as exc:
                raise CodeStoreError(
                    "the S3 code store needs boto3, which is not installed: "
                    "add it (uv add boto3) or use the local store"
                ) from exc
            self._s3 = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region)
        return self._s3

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def upload_target(self, key: str, *, expires_in: float, max_bytes: int) -> UploadTarget:
        url = self._client().generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._key(key), "ContentType": "application/octet-stream"},
            ExpiresIn=int(expires_in),
        )
        return UploadTarget(
            url=str(url),
            expires_at=datetime.now(UTC) + timedelta(seconds=expires_in),
            max_bytes=max_bytes,
            headers={"Content-Type": "application/octet-stream"},
        )

    async def stat(self, key: str) -> ObjectInfo | None:
        client = self._client()

        def head() -> ObjectInfo | None:
            try:
                answer = client.head_object(Bucket=self.bucket, Key=self._key(key))
            except client.exceptions.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return ObjectInfo(key=key, size=int(answer["ContentLength"]))

        return await asyncio.to_thread(head)

    async def download(self, key: str, destination: Path) -> None:
        client = self._client()
        await asyncio.to_thread(client.download_file, self.bucket, self._key(key), str(destination))

    async def delete(self, key: str) -> None:
        client = self._client()
        await asyncio.to_thread(client.delete_object, Bucket=self.bucket, Key=self._key(key))
