"""`PUT /v1/uploads/{token}`: where the local code store's pre-signed URLs point.

The token (HMAC-signed, expiring) is the authorisation, so this route takes no bearer token. The
body is streamed to a staging file under a size limit (413 past it), validated as an archive (422
with the reason when it is not acceptable), then published and recorded in one step: the version
becomes `uploaded` and a build is queued. This handler is the local store's upload callback.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from prometheus_client import Counter

from morty.api import store
from morty.api.errors import Forbidden, Invalid, NotFound, TooLarge
from morty.api.models import UploadResult
from morty.api.routes.deps import Morty, errors
from morty.storage import local
from morty.storage.archives import ArchiveError, inspect_archive
from morty.storage.signing import TokenError

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
log = logging.getLogger(__name__)
UPLOADS = Counter("morty_uploads_total", "Code archive uploads", ["result"])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.put(
    "/{token}",
    response_model=UploadResult,
    responses=errors(403, 404, 409, 413, 422, 507),
    openapi_extra=_BODY,
)
async def upload(token: str, request: Request, morty: Morty) -> UploadResult:
    """Upload a version's code archive (zip, tar or tar.gz) to the URL Morty returned."""
    code_store = morty.code_store
    if not isinstance(code_store, local.LocalCodeStore):
        raise NotFound("this Morty does not receive uploads itself: upload to the URL its code store issued")
    try:
        grant = code_store.signer.verify(token)
    except TokenError as exc:
        UPLOADS.labels("forbidden").inc()
        raise Forbidden(exc.message) from None
    limits = morty.settings.archive_limits
    limit = min(grant.max_bytes, limits.max_archive_bytes)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        UPLOADS.labels("too_large").inc()
        raise TooLarge(f"archive is {length} bytes; the limit is {limit} bytes")
    async with morty.db.read() as session:
        await store.check_upload_allowed(session, grant.key)
    try:
        staged = await code_store.receive(request.stream(), limit)
    except local.TooLarge:
        UPLOADS.labels("too_large").inc()
        raise TooLarge(f"archive exceeds the limit of {limit} bytes") from None
    try:
        try:
            summary = await asyncio.to_thread(inspect_archive, staged.path, limits)
        except ArchiveError as exc:
            UPLOADS.labels("rejected").inc()
            raise Invalid(f"archive rejected: {exc.message}", [{"field": "(body)", "message": exc.message}]) from None
        async with morty.db.transaction() as session:
            version, build = await store.record_upload(session, grant.key, size=staged.size, sha256=staged.sha256)
            code_store.publish(staged, grant.key)
    finally:
        code_store.discard(staged)
    UPLOADS.labels("accepted").inc()
    log.info(
        "code uploaded; build queued",
        extra={
            "function": version.function,
            "version": version.version,
            "bytes": staged.size,
            "files": summary.files,
            "build": build.id,
        },
    )
    await morty.build_queue.enqueue(build.id)
    return UploadResult(version=version, build=build)
