"""Precomputed HTTP/1.1 bytes for the hot path: status lines, hop-by-hop names, canned error responses."""

from __future__ import annotations

import json
from http import HTTPStatus

STATUS_LINES: dict[int, bytes] = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode()) for status in HTTPStatus
}
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
)
# Headers the proxy writes itself towards the upstream.
REWRITTEN = HOP_BY_HOP | {b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def error_response(
    status: int,
    message: str,
    request_id: bytes,
    *,
    close: bool = True,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A small JSON error the gateway answers itself: `{"error": message, "request_id": id}`."""
    body = json.dumps({"error": message, "request_id": request_id.decode("latin-1")}).encode()
    parts = [
        status_line(status),
        b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n" % (len(body), request_id),
    ]
    parts.extend(b"%s: %s\r\n" % pair for pair in extra)
    parts.append(b"connection: close\r\n\r\n" if close else b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


# Response headers the proxy reads or drops (hop-by-hop); every other one is forwarded unchanged.
H_LENGTH, H_REQUEST_ID, H_CHUNKED, H_CONNECTION, H_UPGRADE, H_DROP = range(6)
RESPONSE_HEADER_KINDS = {
    b"content-length": H_LENGTH,
    b"x-request-id": H_REQUEST_ID,
    b"transfer-encoding": H_CHUNKED,
    b"connection": H_CONNECTION,
    b"upgrade": H_UPGRADE,
    b"keep-alive": H_DROP,
    b"proxy-connection": H_DROP,
    b"trailer": H_DROP,
}
