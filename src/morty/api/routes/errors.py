"""One place that turns errors into HTTP responses: `{"error": message, "detail": ...}`, with
`detail` a list of `{"field", "message"}` for invalid input."""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from morty.api.errors import MortyError, NoSpace, Unauthorized
from morty.api.models import ErrorBody

log = logging.getLogger(__name__)


def field_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic's error list as `{"field": "max_instances", "message": ...}` items."""
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


def document(app: FastAPI) -> None:
    """Make the OpenAPI document describe the error bodies this API really sends: `ErrorBody` for
    400 and 422 everywhere, instead of FastAPI's default validation-error shape."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
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
    @app.exception_handler(MortyError)
    async def morty_error(_request: Request, exc: MortyError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"error": exc.message, "detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = field_errors(exc.errors())
        summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        return JSONResponse({"error": f"invalid request: {summary}", "detail": details}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail), "detail": None}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(OSError)
    async def os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise exc
        log.warning("no space left on device", extra={"path": request.url.path, "file": exc.filename})
        return await morty_error(request, NoSpace("no space left on Morty's storage; nothing was saved, retry later"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "detail": None}, status_code=500)
