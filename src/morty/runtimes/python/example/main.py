"""Example Morty function: echoes its request, as JSON.

GET  /fn/echo?name=Ada          -> {"greeting": "Hello, Ada!", "method": "GET", ...}
POST /fn/echo  {"a": 1}         -> {..., "json": {"a": 1}}
GET  /fn/echo?fail=1            -> 500 (the traceback is in the invocation's logs)
"""

from __future__ import annotations

from typing import Any

from morty_runtime import Request, Response  # type: ignore[import-not-found]  # provided by the runtime


def handler(request: Request) -> Response:
    if request.query.get("fail"):
        raise RuntimeError("failing on request (fail=1)")
    name = request.query.get("name", "world")
    print(f"echo: {request.method} {request.path} from invocation {request.invocation_id}")
    reply: dict[str, Any] = {
        "greeting": f"Hello, {name}!",
        "method": request.method,
        "path": request.path,
        "query": {key: request.query.getall(key) for key in request.query},
        "headers": dict(request.headers),
        "invocation_id": request.invocation_id,
    }
    if request.body:
        content_type = request.headers.get("content-type", "")
        reply["json" if content_type.startswith("application/json") else "text"] = (
            request.json() if content_type.startswith("application/json") else request.text()
        )
    return Response(200, {"X-Echo": "1"}, reply)
