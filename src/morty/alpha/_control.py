"""alpha's control API: a minimal HTTP/1.1 server on the control port (``MORTY_ALPHA_PORT``).

GET /ready     200 once the runtime accepts connections, 503 before and while it is down
GET /healthz   the runtime's pid, restarts, uptime, state; 503 once alpha has given up restarting it
GET /logs      captured output as JSON lines (``application/x-ndjson``); query parameters:
               invocation=ID   only that invocation's lines
               since=TS        records with ts >= TS (Unix seconds)      } paging forward: the first
               after=SEQ       records with seq > SEQ                    } ``limit`` matches
               limit=N         at most N records (default 1000); without since/after, the last N
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any
from urllib.parse import parse_qs

from ._logs import LogStore
from ._supervisor import Supervisor

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 503: b"Service Unavailable"}


class _BadQuery(ValueError):
    pass


def listen(host: str, port: int) -> socket.socket:
    """A listening socket bound by address (no name resolution)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


class ControlServer:
    def __init__(self, supervisor: Supervisor, logs: LogStore) -> None:
        self._supervisor = supervisor
        self._logs = logs

    async def start(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._connection, sock=listen(host, port), limit=MAX_HEAD)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    writer.write(self._response(400, *self._json({"error": "bad request"}), keep_alive=False))
                    return
                method, target, version = parts
                length = headers.get("content-length", "0")
                if not length.isdigit() or int(length) > MAX_BODY:
                    writer.write(self._response(400, *self._json({"error": "bad content-length"}), keep_alive=False))
                    return
                await reader.readexactly(int(length))  # GETs carry no body; drop one if sent
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                status, content_type, body = self.route(method, target)
                writer.write(self._response(status, content_type, b"" if method == "HEAD" else body, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def route(self, method: str, target: str) -> tuple[int, str, bytes]:
        path, _, query = target.partition("?")
        if path not in ("/ready", "/healthz", "/logs"):
            return (404, *self._json({"error": f"no such endpoint: {path}"}))
        if method not in ("GET", "HEAD"):
            return (405, *self._json({"error": "only GET"}))
        supervisor = self._supervisor
        if path == "/ready":
            ready = supervisor.state == "ready"
            body = {"ready": ready, "state": supervisor.state, "ready_ms": supervisor.ready_ms}
            return (200 if ready else 503, *self._json(body))
        if path == "/healthz":
            health = supervisor.health()
            return (503 if health["status"] == "failed" else 200, *self._json(health))
        try:
            params = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
            since = self._number(params, "since", float)
            after = self._number(params, "after", int)
            limit = self._number(params, "limit", int)
        except _BadQuery as exc:
            return (400, *self._json({"error": str(exc)}))
        records = self._logs.query(
            invocation=params.get("invocation") or None,
            since=since,
            after=int(after) if after is not None else None,
            limit=1000 if limit is None else max(0, int(limit)),
        )
        return 200, "application/x-ndjson", "".join(record.to_json() + "\n" for record in records).encode()

    @staticmethod
    def _number(params: dict[str, str], name: str, kind: type[float] | type[int]) -> float | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            return kind(raw)
        except ValueError:
            raise _BadQuery(f"{name}={raw!r} is not a valid {kind.__name__}") from None

    @staticmethod
    def _json(body: dict[str, Any]) -> tuple[str, bytes]:
        return "application/json", json.dumps(body).encode() + b"\n"

    @staticmethod
    def _response(status: int, content_type: str, body: bytes, keep_alive: bool) -> bytes:
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status,
            _REASONS[status],
            content_type.encode(),
            len(body),
        )
        return head + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n" + body
