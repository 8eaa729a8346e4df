"""Errors as HTTP responses, the same in every service's API: `{"error": message, "detail": ...}`, with
`detail` a list of `{"field", "message"}` for invalid input, and an OpenAPI document that says so."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


def error_response(
    message: str, status_code: int, detail: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status_code, headers=headers)


def field_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic's error list as `{"field": "spec.resources.memory", "message": ...}` items."""
    out = []
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "invalid JSON")
            position = error.get("loc", ("body", "?"))[-1]
            out.append({"field": "(body)", "message": f"malformed JSON at character {position}: {reason}"})
            continue
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
            loc = loc[1:]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": ".".join(loc) or "(body)", "message": message})
    return out


def document(app: FastAPI, error_body: type[BaseModel]) -> None:
    """Make the OpenAPI document describe the error bodies the API really sends: `error_body` for 400 and
    422 everywhere, instead of FastAPI's default validation-error shape."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["ErrorBody"] = error_body.model_json_schema(ref_template="#/components/schemas/{model}")
            error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    responses = operation.setdefault("responses", {})
                    for status, description in (("400", "Malformed request"), ("422", "Invalid request")):
                        if status in responses or operation.get("requestBody") or operation.get("parameters"):
                            responses[status] = {"description": description, **error}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    """Handlers for invalid requests, HTTP errors and anything unexpected (logged, never a traceback to the
    client). A service adds a handler for its own error type."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = field_errors(exc.errors())
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return error_response(f"invalid request: {summary}", 422, details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return error_response(f"internal error: {type(exc).__name__}", 500)
