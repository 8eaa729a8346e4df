"""The request/response API of Morty's Python runtime: what ``handler(request)`` receives and may return.

Shipped next to ``server.py`` and importable by user code as a top-level module::

    from morty_runtime import Request, Response

    def handler(request: Request) -> Response:
        name = request.query.get("name", "world")
        return Response(200, {"X-Greeting": "yes"}, {"hello": name})

A handler may return:

- a `Response`;
- a ``dict`` or ``list`` (200, JSON);
- a ``str`` (200, ``text/plain; charset=utf-8``) or ``bytes`` (200, ``application/octet-stream``);
- ``None`` (204, no body).

Standard library only: this file is copied into function images that have nothing but python3.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeAlias

__all__ = ["Headers", "HeadersInput", "MultiDict", "QueryParams", "Request", "Response", "ResponseBody"]

JSON_CONTENT_TYPE = "application/json"


class MultiDict(Mapping[str, str]):
    """An immutable, ordered multi-dict: ``d[key]`` and ``d.get(key)`` give the first value, `getall` every one.

    Iteration and ``len`` see each distinct key once, in order of first appearance.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)
        self._index: dict[str, list[str]] = {}
        for key, value in self._items:
            self._index.setdefault(self._key(key), []).append(value)

    @staticmethod
    def _key(key: str) -> str:
        return key

    def __getitem__(self, key: str) -> str:
        return self._index[self._key(key)][0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._key(key) in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def getall(self, key: str) -> list[str]:
        """Every value of ``key``, in order; ``[]`` when absent."""
        return list(self._index.get(self._key(key), ()))

    def multi_items(self) -> list[tuple[str, str]]:
        """All ``(key, value)`` pairs as received, repeated keys included."""
        return list(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MultiDict):
            return self._index == other._index
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class QueryParams(MultiDict):
    """The decoded query string: ``?tag=a&tag=b&q=x`` gives ``query["tag"] == "a"``, ``getall("tag") == ["a", "b"]``."""

    __slots__ = ()


class Headers(MultiDict):
    """Request headers, case-insensitive: ``headers["content-type"] == headers["Content-Type"]``.

    Iteration yields lower-cased names; `multi_items` keeps names as the client sent them.
    """

    __slots__ = ()

    @staticmethod
    def _key(key: str) -> str:
        return key.lower()


class Request:
    """One HTTP request, as the runtime received it.

    ``path`` is the percent-decoded path, ``raw_path`` the request target's path as sent, ``query_string`` the raw
    query (without ``?``). ``invocation_id`` identifies this invocation in Morty's records and logs.
    """

    __slots__ = ("body", "client", "headers", "invocation_id", "method", "path", "query", "query_string", "raw_path")

    def __init__(
        self,
        method: str,
        path: str,
        *,
        raw_path: str | None = None,
        query_string: str = "",
        query: QueryParams | None = None,
        headers: Headers | None = None,
        body: bytes = b"",
        invocation_id: str = "",
        client: tuple[str, int] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.raw_path = path if raw_path is None else raw_path
        self.query_string = query_string
        self.query = QueryParams() if query is None else query
        self.headers = Headers() if headers is None else headers
        self.body = body
        self.invocation_id = invocation_id
        self.client = client

    def text(self, encoding: str | None = None) -> str:
        """The body decoded with ``encoding``, else the Content-Type's charset, else UTF-8 (invalid bytes replaced)."""
        if encoding is None:
            encoding = _charset(self.headers.get("content-type", "")) or "utf-8"
        try:
            return self.body.decode(encoding, errors="replace")
        except LookupError:  # an unknown charset named by the client
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises `ValueError` (``json.JSONDecodeError``) when it is not JSON."""
        return json.loads(self.body)

    def __repr__(self) -> str:
        target = self.raw_path + ("?" + self.query_string if self.query_string else "")
        return f"<Request {self.method} {target} invocation={self.invocation_id} body={len(self.body)}B>"


HeadersInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str, str]]
ResponseBody: TypeAlias = bytes | bytearray | memoryview | str | dict[str, Any] | list[Any] | None


class Response:
    """What a handler returns: status, headers and a body.

    ``body`` may be ``bytes``, ``str`` (encoded as UTF-8) or a ``dict``/``list`` (encoded as JSON). A Content-Type is
    added from the body's type unless ``headers`` carries one. Headers may repeat (pass a list of pairs).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int = 200, headers: HeadersInput | None = None, body: ResponseBody = b"") -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"HTTP status must be within 100..599, not {status}")
        self.status = status
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        content_type: str | None
        if body is None:
            self.body, content_type = b"", None
        elif isinstance(body, bytes | bytearray | memoryview):
            self.body, content_type = bytes(body), "application/octet-stream"
        elif isinstance(body, str):
            self.body, content_type = body.encode(), "text/plain; charset=utf-8"
        elif isinstance(body, dict | list):
            self.body, content_type = json.dumps(body, separators=(",", ":")).encode(), JSON_CONTENT_TYPE
        else:
            raise TypeError(f"a Response body must be bytes, str, dict, list or None, not {type(body).__name__}")
        if content_type and self.body and not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("Content-Type", content_type))
        self.headers: list[tuple[str, str]] = pairs

    @classmethod
    def from_result(cls, result: object) -> Response:
        """Turn whatever a handler returned into a `Response`; `TypeError` for anything unsupported."""
        if isinstance(result, Response):
            return result
        if result is None:
            return cls(204)
        if isinstance(result, bytes | bytearray | memoryview | str | dict | list):
            return cls(200, None, result)
        raise TypeError(f"handler returned {type(result).__name__}; return a Response, dict, list, str, bytes or None")

    def __repr__(self) -> str:
        return f"<Response {self.status} body={len(self.body)}B>"


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            return value.strip('"')
    return None
