"""The handler-facing API: request accessors and what a handler may return."""

from __future__ import annotations

import pytest

from morty.runtimes.python.morty_runtime import Headers, QueryParams, Request, Response


def test_headers_are_case_insensitive_and_keep_repeats() -> None:
    headers = Headers([("Content-Type", "text/plain"), ("X-Tag", "a"), ("x-tag", "b")])
    assert headers["content-type"] == headers["CONTENT-TYPE"] == "text/plain"
    assert "X-TAG" in headers
    assert headers.getall("X-Tag") == ["a", "b"]
    assert list(headers) == ["content-type", "x-tag"]
    assert headers.multi_items()[0] == ("Content-Type", "text/plain")


def test_query_params_multi_dict() -> None:
    query = QueryParams([("tag", "a"), ("q", ""), ("tag", "b")])
    assert query["tag"] == "a"
    assert query.getall("tag") == ["a", "b"]
    assert query.get("q") == ""
    assert query.get("missing", "d") == "d"
    assert query.getall("missing") == []


def test_request_text_uses_charset_and_json_parses() -> None:
    body = "héllo".encode("latin-1")
    request = Request("POST", "/", headers=Headers([("Content-Type", "text/plain; charset=latin-1")]), body=body)
    assert request.text() == "héllo"
    assert Request("POST", "/", body=b'{"a": [1]}').json() == {"a": [1]}
    with pytest.raises(ValueError):
        Request("POST", "/", body=b"not json").json()


@pytest.mark.parametrize(
    ("result", "status", "content_type", "body"),
    [
        ({"a": 1}, 200, "application/json", b'{"a":1}'),
        ([1, 2], 200, "application/json", b"[1,2]"),
        ("hi", 200, "text/plain; charset=utf-8", b"hi"),
        (b"\x00", 200, "application/octet-stream", b"\x00"),
        (None, 204, None, b""),
    ],
)
def test_handler_results_become_responses(result: object, status: int, content_type: str | None, body: bytes) -> None:
    response = Response.from_result(result)
    assert (response.status, response.body) == (status, body)
    assert dict(response.headers).get("Content-Type") == content_type


def test_response_keeps_explicit_content_type_and_rejects_bad_input() -> None:
    response = Response(201, {"content-type": "application/problem+json"}, {"x": 1})
    assert response.headers == [("content-type", "application/problem+json")]
    with pytest.raises(ValueError):
        Response(99)
    with pytest.raises(TypeError):
        Response.from_result(42)
