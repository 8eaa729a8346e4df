"""A minimal HTTP/1.1 client for the worker's calls to its management process: the change stream
(chunked NDJSON, parsed by httptools as the proxy itself does) and small JSON POSTs. httpx costs about
a millisecond of CPU per call here, which at 100 configuration changes a second would be taken from the
data plane."""

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


class ManagementClient:
    def __init__(self, base_url: str, token: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.authority = parts.netloc.encode()
        self.token = token.encode()

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
        try:
            return response.status, json.loads(body) if body else None
        except ValueError:
            return response.status, body.decode("latin-1")
