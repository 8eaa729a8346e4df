"""`/v1/functions/{name}/versions`: immutable semver versions, each created with an upload URL for
its code archive."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from morty.api import store
from morty.api.errors import Conflict, Unavailable
from morty.api.models import UploadResult, UploadTarget, Version, VersionCreate, VersionCreated, VersionList
from morty.api.routes.deps import AUTHENTICATED, Morty, MortyState, errors
from morty.storage.base import CodeStoreError

router = APIRouter(prefix="/v1/functions/{name}/versions", tags=["versions"], **AUTHENTICATED)
log = logging.getLogger(__name__)


def _upload_target(morty: MortyState, key: str) -> UploadTarget:
    try:
        target = morty.code_store.upload_target(
            key,
            expires_in=morty.settings.upload_url_ttl,
            max_bytes=morty.settings.archive_limits.max_archive_bytes,
        )
    except CodeStoreError as exc:
        raise Unavailable(f"code store unavailable: {exc}") from None
    return UploadTarget(
        url=target.url, headers=target.headers, expires_at=target.expires_at, max_bytes=target.max_bytes
    )


@router.post("", status_code=201, response_model=VersionCreated, responses=errors(404, 409, 422))
async def create_version(name: str, request: VersionCreate, morty: Morty) -> VersionCreated:
    """Create a version (status `awaiting_upload`) and return a pre-signed URL to PUT its code
    archive (zip or tar.gz) to. Uploading it queues the build."""
    async with morty.db.transaction() as session:
        version, key = await store.create_version(session, name, request)
        upload = _upload_target(morty, key)
    log.info("version created", extra={"function": name, "version": version.version})
    return VersionCreated(upload=upload, **version.model_dump())


@router.get("", response_model=VersionList, responses=errors(404))
async def list_versions(name: str, morty: Morty) -> VersionList:
    async with morty.db.read() as session:
        return VersionList(items=await store.list_versions(session, name))


@router.get("/{version}", response_model=Version, responses=errors(404))
async def get_version(name: str, version: str, morty: Morty) -> Version:
    async with morty.db.read() as session:
        return await store.get_version(session, name, version)


@router.post("/{version}/upload-url", response_model=UploadTarget, responses=errors(404, 409))
async def renew_upload_url(name: str, version: str, morty: Morty) -> UploadTarget:
    """A fresh upload URL for a version still awaiting its code (the first one expired)."""
    async with morty.db.read() as session:
        key = await store.upload_key(session, name, version)
    return _upload_target(morty, key)


@router.post("/{version}/upload-confirm", response_model=UploadResult, responses=errors(404, 409))
async def confirm_upload(name: str, version: str, morty: Morty) -> UploadResult:
    """Tell Morty the archive is uploaded, for stores that cannot (S3): the object is checked, the
    version becomes `uploaded` and its build is queued. On a version already uploaded this only
    reports its state."""
    async with morty.db.read() as session:
        key, awaiting = await store.confirm_target(session, name, version)
        if not awaiting:
            current = await store.get_version(session, name, version)
            return UploadResult(version=current, build=await store.latest_build(session, name, version))
    try:
        info = await morty.code_store.stat(key)
    except CodeStoreError as exc:
        raise Unavailable(f"code store unavailable: {exc}") from None
    if info is None:
        raise Conflict(f"no code uploaded yet for version {version} of {name!r}: PUT it to the upload URL first")
    async with morty.db.transaction() as session:
        uploaded, build = await store.record_upload(session, key, size=info.size, sha256=None)
    await morty.build_queue.enqueue(build.id)
    return UploadResult(version=uploaded, build=build)
