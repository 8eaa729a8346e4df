"""{{name}}: a Morty function.

Morty calls ``handler(request)`` once per HTTP request sent to the function (``/fn/{{name}}``).

``request`` (a ``morty_runtime.Request``) carries the full request:
    request.method          "GET", "POST", ...
    request.path            the path, percent-decoded
    request.query           query parameters: request.query.get("name"), request.query.getall("tag")
    request.headers         case-insensitive: request.headers.get("content-type")
    request.body            the raw body (bytes); request.text() and request.json() decode it
    request.invocation_id   this invocation's id, as shown by ``morty logs``

Return a ``morty_runtime.Response(status, headers, body)``, or simply a dict/list (JSON), a str, bytes, or None (204).
Anything printed while handling a request is kept as that invocation's log. An exception becomes a 500 response;
its traceback goes to the logs, never to the caller.
"""

from __future__ import annotations

from morty_runtime import Request, Response  # type: ignore[import-not-found]  # provided by the runtime


def handler(request: Request) -> Response:
    # Read what you need from the request...
    name = request.query.get("name", "world")
    # ...print to log (attributed to this invocation)...
    print(f"greeting {name}")
    # ...and answer: status, headers, body (bytes, str, or dict/list for JSON).
    return Response(200, {"Cache-Control": "no-store"}, {"message": f"Hello, {name}!"})
