"""The worker's kept-alive connection for reports to its management process, against a small real server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.proxy._wire import KeptConnection


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    bodies: list[dict[str, object]] = field(default_factory=list)
    close_after_response: bool = False


async def _serve_one(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    server.connections += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            server.bodies.append(json.loads(await reader.readexactly(length)))
            answer = json.dumps({"ok": len(server.bodies)}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
            if server.close_after_response:
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    listening = await asyncio.start_server(lambda r, w: _serve_one(state, r, w), "127.0.0.1", 0)
    state.port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield state


def _connection(server: Server) -> KeptConnection:
    return KeptConnection("127.0.0.1", server.port, b"host: test\r\n")


async def test_reports_share_one_connection(server: Server) -> None:
    kept = _connection(server)
    answers = [await kept.post_json("/internal/report", {"n": n}) for n in range(3)]
    kept.close()
    assert answers == [(200, {"ok": 1}), (200, {"ok": 2}), (200, {"ok": 3})]
    assert server.bodies == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert server.connections == 1


async def test_a_connection_the_server_closed_is_replaced(server: Server) -> None:
    server.close_after_response = True
    kept = _connection(server)
    first = await kept.post_json("/internal/report", {"n": 1})
    second = await kept.post_json("/internal/report", {"n": 2})
    kept.close()
    assert (first, second) == ((200, {"ok": 1}), (200, {"ok": 2}))
    assert server.bodies == [{"n": 1}, {"n": 2}]
    assert server.connections == 2


async def test_no_server_is_an_error_not_a_retry_loop(server: Server) -> None:
    kept = KeptConnection("127.0.0.1", 1, b"host: test\r\n")
    with pytest.raises(OSError):
        await kept.post_json("/internal/report", {"n": 1})
