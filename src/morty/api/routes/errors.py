"""Morty's errors as HTTP responses, in the shape every service's API shares (`servicekit.http_errors`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from morty.api.errors import MortyError, Unauthorized
from morty.api.models import ErrorBody
from servicekit import http_errors

__all__ = ["document", "install"]


def document(app: FastAPI) -> None:
    http_errors.document(app, ErrorBody)


def install(app: FastAPI) -> None:
    http_errors.install(app)

    @app.exception_handler(MortyError)
    async def morty_error(_request: Request, exc: MortyError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return http_errors.error_response(exc.message, exc.status_code, exc.detail, headers)
