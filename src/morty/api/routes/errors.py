"""Morty's errors as HTTP responses, in the shape every service's API shares (`servicekit.http_errors`)."""

from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from morty.api.errors import MortyError, NoSpace, Unauthorized
from morty.api.models import ErrorBody
from servicekit import http_errors

__all__ = ["document", "install"]

log = logging.getLogger(__name__)


def document(app: FastAPI) -> None:
    http_errors.document(app, ErrorBody)


def install(app: FastAPI) -> None:
    http_errors.install(app)

    @app.exception_handler(MortyError)
    async def morty_error(_request: Request, exc: MortyError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return http_errors.error_response(exc.message, exc.status_code, exc.detail, headers)

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        log.warning("no space left on device", extra={"path": request.url.path, "file": exc.filename})
        return await morty_error(request, NoSpace("no space left on Morty's storage; nothing was saved, retry later"))
