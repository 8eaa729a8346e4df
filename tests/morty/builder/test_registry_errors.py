"""What a push's error says when the registry answers a server error (`morty.builder.registry`)."""

from __future__ import annotations

import httpx
import pytest

from morty.builder.registry import _reported

ENOSPC_BODY = {
    "errors": [
        {
            "code": "UNKNOWN",
            "message": "unknown error",
            "detail": {
                "DriverName": "filesystem",
                "Enclosed": {"Op": "write", "Path": "/srv/registry/_uploads/x/startedat", "Err": 28},
            },
        }
    ]
}


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            httpx.Response(500, json=ENOSPC_BODY),
            "no space left on its storage (No space left on device: write /srv/registry/_uploads/x/startedat)",
        ),
        (
            httpx.Response(500, json={"errors": [{"detail": {"Enclosed": {"Op": "open", "Path": "/p", "Err": 13}}}]}),
            "its storage failed (Permission denied: open /p)",
        ),
        (httpx.Response(503, json={"errors": [{"code": "UNAVAILABLE", "message": "service unavailable"}]}),
         "service unavailable"),
        (httpx.Response(502, text="<html>bad gateway</html>"), "<html>bad gateway</html>"),
        (httpx.Response(500, json={"errors": []}), "Internal Server Error"),
        (httpx.Response(500, json={"errors": [{"detail": {"Enclosed": "?"}}]}), "an error it did not name"),
    ],
)  # fmt: skip
def test_the_registrys_own_error_is_named(response: httpx.Response, expected: str) -> None:
    assert _reported(response) == expected
