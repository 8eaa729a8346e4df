"""The S3 code store through boto3 against an S3-compatible server (moto's, started as a process): pre-signed
PUT uploads, stat, download and delete; and Morty APIs configured with it, where the client confirms its upload
and that queues the build. (moto does not check the signatures of pre-signed URLs; S3 does.)"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from morty.api.app import create_app
from morty.api.settings import Settings
from morty.storage.s3 import S3CodeStore
from tests.morty.api.conftest import TOKEN, zip_bytes
from tests.support.registry import free_tcp_port
from tests.support.services import served


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_tcp_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            assert server.poll() is None and time.monotonic() < deadline, "the S3 server did not start"
            time.sleep(0.1)
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    name = f"code-{os.getpid()}-{time.monotonic_ns()}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


async def test_presigned_upload_stat_download_delete(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    store = S3CodeStore(bucket, prefix="morty", endpoint_url=s3_endpoint, region="us-east-1")
    target = store.upload_target("f1/v1.archive", expires_in=60, max_bytes=1000)
    assert target.url.startswith(f"{s3_endpoint}/{bucket}/morty/f1/v1.archive?") and "Signature=" in target.url
    assert await store.stat("f1/v1.archive") is None
    async with httpx.AsyncClient() as plain:
        put = await plain.put(target.url, content=b"archive-bytes", headers=target.headers)
    assert put.status_code == 200, put.text

    info = await store.stat("f1/v1.archive")
    assert info is not None and info.size == len(b"archive-bytes")
    await store.download("f1/v1.archive", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"archive-bytes"
    await store.delete("f1/v1.archive")
    assert await store.stat("f1/v1.archive") is None
    with pytest.raises(ValueError, match="invalid object key"):
        store.upload_target("../escape", expires_in=60, max_bytes=10)


async def test_morty_with_the_s3_store_builds_once_the_upload_is_confirmed(
    s3_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    port = free_tcp_port()
    settings = dataclasses.replace(
        Settings(),
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'morty.db'}",
        public_url=f"http://127.0.0.1:{port}",
        token=TOKEN,
        code_store="s3",
        s3_bucket=bucket,
        s3_endpoint=s3_endpoint,
        s3_region="us-east-1",
    )
    app = create_app(settings)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with served(app, port) as url, httpx.AsyncClient(base_url=url, headers=auth, timeout=30) as api:
        assert (await api.post("/v1/functions", json={"name": "hello", "runtime": "python3.11"})).status_code == 201
        created = (await api.post("/v1/functions/hello/versions", json={"version": "1.0.0"})).json()
        assert created["upload"]["url"].startswith(f"{s3_endpoint}/{bucket}/")
        early = await api.post("/v1/functions/hello/versions/1.0.0/upload-confirm")
        assert early.status_code == 409 and "no code uploaded yet" in early.json()["error"]

        async with httpx.AsyncClient() as plain:
            put = await plain.put(created["upload"]["url"], content=zip_bytes(), headers=created["upload"]["headers"])
        assert put.status_code == 200, put.text
        confirmed = await api.post("/v1/functions/hello/versions/1.0.0/upload-confirm")
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["version"]["status"] == "uploaded" and confirmed.json()["build"]["status"] == "queued"
        assert confirmed.json()["version"]["size_bytes"] == len(zip_bytes())

        deleted = await api.delete("/v1/functions/hello")
        assert deleted.status_code == 200 and deleted.json()["code_objects"] == 1
    listing = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    assert listing.get("KeyCount", 0) == 0, "deleting the function deletes its code"
