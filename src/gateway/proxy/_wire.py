"""A minimal HTTP/1.1 client for the worker's calls to its management process: the change stream
(chunked NDJSON, parsed by httptools as the proxy itself does) and small JSON POSTs. httpx costs about
a millisecond of CPU per call here, which at 100 configuration changes a second would be taken from the
data plane.

The worker's reports (several a second while the configuration changes) go over one kept-alive
connection (`KeptConnection`): a new connection per report cost both processes a TCP handshake and a
socket in TIME_WAIT each time. Provisioning calls, rare and long, get a connection each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httptools


class WireError(Exception):
    """The management process answered with an error status or broke the connection."""


class _Response:
    """httptools callbacks collecting a response; body bytes go to a queue as they arrive."""

    def __init__(self) -> None:
        self.status = 0
        self.headers_done = asyncio.Event()
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

    def on_headers_complete(self) -> None:
        self.headers_done.set()

    def on_body(self, body: bytes) -> None:
        self.chunks.put_nowait(body)

    def on_message_complete(self) -> None:
        self.chunks.put_nowait(None)


class _Complete:
    """httptools callbacks for one whole response read off a kept-alive connection."""

    def __init__(self) -> None:
        self.body = b""
        self.done = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None

    def on_headers_complete(self) -> None:
        # Read here: once the message is complete the parser has reset for the next one.
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class KeptConnection:
    """One kept-alive connection for idempotent JSON POSTs, one at a time. A request that fails on a reused
    connection (the server closes idle ones after a few seconds, or restarted) is sent again once on a new
    one. A request given up half-way (a timeout) closes the connection: its response may still come."""

    def __init__(self, host: str, port: int, head: bytes) -> None:
        self.host, self.port, self._head = host, port, head
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._lock = asyncio.Lock()

    async def post_json(self, target: str, payload: dict[str, Any]) -> tuple[int, Any]:
        body = json.dumps(payload).encode()
        request = b"POST %s HTTP/1.1\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
            target.encode(),
            self._head,
            len(body),
            body,
        )
        async with self._lock:
            for attempt in range(2):
                reused = self._stream is not None
                try:
                    return await self._exchange(request)
                except (OSError, WireError):
                    self.close()
                    if not reused or attempt:
                        raise
                except BaseException:
                    self.close()
                    raise
            raise AssertionError("unreachable")

    async def _exchange(self, request: bytes) -> tuple[int, Any]:
        if self._stream is None:
            self._stream = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._stream
        writer.write(request)
        response = _Complete()
        parser = response.parser = httptools.HttpResponseParser(response)
        while not response.done:
            data = await reader.read(65536)
            if not data:
                raise WireError("connection closed before a response")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise WireError(f"malformed response: {exc}") from exc
        if not response.keep_alive:
            self.close()
        return parser.get_status_code(), _json_or_text(response.body)

    def close(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None


def _json_or_text(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body.decode("latin-1")


class ManagementClient:
    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.authority = parts.netloc.encode()
        self.token = token.encode()
        self.kept = KeptConnection(
            self.host, self.port, b"host: %s\r\nauthorization: Bearer %s\r\n" % (self.authority, self.token)
        )

    async def _request(self, method: bytes, target: str, body: bytes = b"") -> tuple[_Response, asyncio.Task[None]]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\nauthorization: Bearer %s\r\nconnection: close\r\n" % (
            method,
            target.encode(),
            self.authority,
            self.token,
        )
        if body:
            head += b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        writer.write(head + b"\r\n" + body)
        response = _Response()
        parser = httptools.HttpResponseParser(response)

        async def pump() -> None:
            try:
                while data := await reader.read(65536):
                    parser.feed_data(data)
                    if response.status == 0 and response.headers_done.is_set():
                        response.status = parser.get_status_code()
                if response.status == 0:
                    response.headers_done.set()
            except (OSError, httptools.HttpParserError):
                response.headers_done.set()
            finally:
                response.chunks.put_nowait(None)
                writer.close()

        task = asyncio.get_running_loop().create_task(pump())
        await response.headers_done.wait()
        return response, task

    async def lines(self, target: str) -> AsyncIterator[bytes]:
        """GET `target` and yield the body line by line as it streams."""
        response, task = await self._request(b"GET", target)
        try:
            if response.status != 200:
                raise WireError(f"GET {target}: status {response.status}")
            pending = b""
            while (chunk := await response.chunks.get()) is not None:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    if line:
                        yield line
            raise WireError(f"GET {target}: stream ended")
        finally:
            task.cancel()

    async def post_json(self, target: str, payload: dict[str, Any]) -> tuple[int, Any]:
        response, task = await self._request(b"POST", target, json.dumps(payload).encode())
        body = b""
        while (chunk := await response.chunks.get()) is not None:
            body += chunk
        await task
        if response.status == 0:
            raise WireError(f"POST {target}: no response")
        return response.status, _json_or_text(body)
