"""Versions (semver, immutable, `latest`), uploads through the signed URL, builds."""

from __future__ import annotations

import errno
import io
import tarfile
import zipfile
from pathlib import Path

import httpx

from morty.api.builds import NoBuilderQueue
from morty.storage.archives import ArchiveLimits
from tests.morty.api.conftest import (
    MortyFactory,
    create_function,
    create_version,
    deploy,
    finish_build,
    ready_version,
    upload,
    zip_bytes,
)


async def test_versions_are_semver_and_immutable(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    for bad in ("1.2", "v1.2.3", "01.2.3", "1.2.3+build.5", "latest", ""):
        response = await api.post("/v1/functions/hello/versions", json={"version": bad})
        assert response.status_code == 422, bad
        assert response.json()["detail"][0]["field"] == "version", bad
    for version in ("1.2.0", "1.10.0", "1.9.0", "2.0.0-rc.1"):
        created = await create_version(api, "hello", version)
        assert created["status"] == "awaiting_upload"
        assert created["upload"]["method"] == "PUT"
        assert created["upload"]["url"].startswith(f"{api.base_url}/v1/uploads/")
    duplicate = await api.post("/v1/functions/hello/versions", json={"version": "1.9.0"})
    assert duplicate.status_code == 409 and "immutable" in duplicate.json()["error"]
    listed = [v["version"] for v in (await api.get("/v1/functions/hello/versions")).json()["items"]]
    assert listed == ["2.0.0-rc.1", "1.10.0", "1.9.0", "1.2.0"]
    assert (await api.get("/v1/functions/hello/versions/1.9.0")).json()["version"] == "1.9.0"
    assert (await api.get("/v1/functions/hello/versions/9.9.9")).status_code == 404
    assert (await api.post("/v1/functions/nope/versions", json={"version": "1.0.0"})).status_code == 404


async def test_latest_is_the_highest_ready_version(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    assert (await api.get("/v1/resolve/hello")).status_code == 404
    await ready_version(api, "hello", "1.2.0")
    await ready_version(api, "hello", "1.10.0")
    await create_version(api, "hello", "3.0.0")  # never uploaded: not ready
    await ready_version(api, "hello", "2.0.0", succeeded=False)  # failed build: not ready
    latest = (await api.get("/v1/resolve/hello")).json()
    assert (latest["version"], latest["via"], latest["status"]) == ("1.10.0", "latest", "ready")
    assert latest["digest"] == "sha256:" + "a" * 64
    assert (await api.get("/v1/resolve/hello@latest")).json()["version"] == "1.10.0"
    assert (await api.get("/v1/functions/hello")).json()["latest_version"] == "1.10.0"
    failed = (await api.get("/v1/functions/hello/versions/2.0.0")).json()
    assert failed["status"] == "failed" and "pip install failed" in failed["status_message"]


async def test_upload_through_the_signed_url_queues_a_build(api: httpx.AsyncClient, data_dir: Path) -> None:
    await create_function(api, "hello")
    created = await create_version(api, "hello", "1.0.0")
    archive = zip_bytes({"handler.py": "def handler(r):\n    return 'hi'\n", "requirements.txt": "requests\n"})
    response = await upload(created["upload"]["url"], archive)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["version"]["status"] == "uploaded"
    assert result["version"]["size_bytes"] == len(archive)
    assert result["build"]["status"] == "queued"

    version = (await api.get("/v1/functions/hello/versions/1.0.0")).json()
    assert version["status"] == "uploaded" and len(version["sha256"]) == 64
    builds = (await api.get("/v1/functions/hello/builds")).json()["items"]
    assert [(b["id"], b["status"], b["version"]) for b in builds] == [(result["build"]["id"], "queued", "1.0.0")]
    queue = api.app.state.morty.build_queue  # type: ignore[attr-defined]
    assert isinstance(queue, NoBuilderQueue) and queue.enqueued == [result["build"]["id"]]
    stored = list((data_dir / "code").rglob("*.archive"))
    assert len(stored) == 1 and stored[0].read_bytes() == archive
    assert list((data_dir / "code" / ".staging").iterdir()) == []

    again = await upload(created["upload"]["url"], archive)
    assert again.status_code == 409 and "immutable" in again.json()["error"]
    renew = await api.post("/v1/functions/hello/versions/1.0.0/upload-url")
    assert renew.status_code == 409

    await finish_build(api, result["build"]["id"])
    build = (await api.get(f"/v1/functions/hello/builds/{result['build']['id']}")).json()
    assert build["status"] == "succeeded" and build["log"] == "installing dependencies\n"
    assert (await api.get("/v1/functions/hello/builds/nope")).status_code == 404


async def test_upload_confirm_without_an_upload_is_refused(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    created = await create_version(api, "hello", "1.0.0")
    early = await api.post("/v1/functions/hello/versions/1.0.0/upload-confirm")
    assert early.status_code == 409 and "no code uploaded yet" in early.json()["error"]
    await upload(created["upload"]["url"], zip_bytes())
    confirmed = await api.post("/v1/functions/hello/versions/1.0.0/upload-confirm")
    assert confirmed.status_code == 200
    assert confirmed.json()["version"]["status"] == "uploaded" and confirmed.json()["build"]["status"] == "queued"
    assert len((await api.get("/v1/functions/hello/builds")).json()["items"]) == 1, "confirming twice builds once"


async def test_expired_and_forged_upload_urls_are_refused(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    created = await create_version(api, "hello", "1.0.0")
    url = created["upload"]["url"]
    token = url.rsplit("/", 1)[1]
    payload, signature = token.split(".")

    forged_signature = await upload(
        url[: -len(signature)] + ("A" if signature[0] != "A" else "B") + signature[1:], b"x"
    )
    assert forged_signature.status_code == 403
    assert "signature does not match" in forged_signature.json()["error"]
    other_payload = (await create_version(api, "hello", "2.0.0"))["upload"]["url"].rsplit("/", 1)[1].split(".")[0]
    swapped = await upload(url.replace(payload, other_payload), zip_bytes())
    assert swapped.status_code == 403
    assert (await upload(f"{api.base_url}/v1/uploads/garbage", zip_bytes())).status_code == 403

    code_store = api.app.state.morty.code_store  # type: ignore[attr-defined]
    key = code_store.signer.verify(token).key
    expired_token, _ = code_store.signer.sign(key, expires_in=-1, max_bytes=1000)
    expired = await upload(f"{api.base_url}/v1/uploads/{expired_token}", zip_bytes())
    assert expired.status_code == 403 and "expired" in expired.json()["error"]
    assert (await api.get("/v1/functions/hello/versions/1.0.0")).json()["status"] == "awaiting_upload"

    renewed = await api.post("/v1/functions/hello/versions/1.0.0/upload-url")
    assert renewed.status_code == 200
    assert (await upload(renewed.json()["url"], zip_bytes())).status_code == 200


async def test_oversized_and_hostile_uploads_are_refused(morty_factory: MortyFactory, data_dir: Path) -> None:
    async with morty_factory(archive_limits=ArchiveLimits(max_archive_bytes=4096)) as api:
        await create_function(api, "hello")
        created = await create_version(api, "hello", "1.0.0")
        url = created["upload"]["url"]
        assert created["upload"]["max_bytes"] == 4096

        big = await upload(url, b"\0" * 10_000)
        assert big.status_code == 413 and "4096" in big.json()["error"]

        async def chunks() -> object:
            for _ in range(10):
                yield b"\0" * 1000

        async with httpx.AsyncClient() as plain:
            streamed = await plain.put(url, content=chunks())  # chunked: no Content-Length to check first
        assert streamed.status_code == 413

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("../../escape.py", "print('pwned')")
        slip = await upload(url, buffer.getvalue())
        assert slip.status_code == 422 and "'..' in path" in slip.json()["error"]

        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            link = tarfile.TarInfo("etc")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc"
            tar.addfile(link)
        symlink = await upload(url, buffer.getvalue())
        assert symlink.status_code == 422 and "absolute path" in symlink.json()["error"]

        corrupt = await upload(url, b"PK\x03\x04" + b"\0" * 100)
        assert corrupt.status_code == 422 and "corrupt zip" in corrupt.json()["error"]
        assert (await upload(url, b"just text")).json()["error"] == "archive rejected: not a zip, tar or tar.gz archive"

        assert (await api.get("/v1/functions/hello/versions/1.0.0")).json()["status"] == "awaiting_upload"
        assert (await api.get("/v1/functions/hello/builds")).json()["items"] == []
        assert list((data_dir / "code" / ".staging").iterdir()) == []
        assert not list((data_dir / "code").rglob("*.archive"))
        assert not (data_dir.parent / "escape.py").exists()
        assert (await upload(url, zip_bytes())).status_code == 200, "a good archive is still accepted"


async def test_a_queued_build_can_be_cancelled_once(api: httpx.AsyncClient) -> None:
    await create_function(api, "hello")
    await ready_version(api, "hello", "1.0.0")
    uploaded = await deploy(api, "hello", "1.1.0")
    build_id = uploaded["build"]["id"]

    cancelled = await api.post(f"/v1/functions/hello/builds/{build_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "failed" and cancelled.json()["message"] == "cancelled"
    assert "cancelled before it started" in cancelled.json()["log"]
    version = (await api.get("/v1/functions/hello/versions/1.1.0")).json()
    assert version["status"] == "failed" and "cancelled" in version["status_message"]
    assert (await api.get("/v1/resolve/hello")).json()["version"] == "1.0.0", "the previous version keeps serving"

    again = await api.post(f"/v1/functions/hello/builds/{build_id}/cancel")
    assert again.status_code == 409 and "already finished" in again.json()["error"]
    assert (await api.post("/v1/functions/hello/builds/nope/cancel")).status_code == 404


async def test_an_upload_to_a_full_disk_is_a_507_with_a_message(api: httpx.AsyncClient, data_dir: Path) -> None:
    await create_function(api, "hello")
    created = await create_version(api, "hello", "1.0.0")
    code_store = api.app.state.morty.code_store  # type: ignore[attr-defined]

    async def full(*_args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(data_dir / "code" / ".staging" / "x"))

    code_store.receive = full
    response = await upload(created["upload"]["url"], zip_bytes())
    assert response.status_code == 507, response.text
    assert response.json() == {
        "error": "no space left on Morty's storage; nothing was saved, retry later",
        "detail": None,
    }
    assert (await api.get("/v1/functions/hello/versions/1.0.0")).json()["status"] == "awaiting_upload"
