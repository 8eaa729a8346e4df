"""RIK's errors as HTTP responses, in the shape every service's API shares (`servicekit.http_errors`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rik.controller.errors import RikError
from rik.model import ErrorBody
from servicekit import http_errors

__all__ = ["document", "install"]


def document(app: FastAPI) -> None:
    http_errors.document(app, ErrorBody)


def install(app: FastAPI) -> None:
    http_errors.install(app)

    @app.exception_handler(RikError)
    async def rik_error(_request: Request, exc: RikError) -> JSONResponse:
        return http_errors.error_response(exc.message, exc.status_code)
