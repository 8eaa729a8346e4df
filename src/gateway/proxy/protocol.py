"""The client side of the proxy: one `ClientConnection` per downstream TCP connection, one `Exchange` per
request. All work happens in httptools parser callbacks and in the upstream connection's callbacks; a
task is started only to open a new upstream connection (pool miss), to wait for a JWKS fetch, or to ask
for provisioning.

Back-pressure runs both ways: request body bytes go straight to the upstream transport, and when that
transport's buffer passes its high-water mark the client transport stops reading (and the other way
round for the response). Before an upstream connection is attached, at most `BUFFER_LIMIT` bytes of body
are buffered before reading pauses.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from contextlib import suppress
from time import perf_counter
from typing import TYPE_CHECKING

import httptools

from gateway.proxy._http import (
    CONTINUE,
    H_CHUNKED,
    H_CONNECTION,
    H_LENGTH,
    H_REQUEST_ID,
    H_UPGRADE,
    IDEMPOTENT,
    LAST_CHUNK,
    RESPONSE_HEADER_KINDS,
    REWRITTEN,
    error_response,
    status_line,
)
from gateway.proxy.clock import CLOCK
from gateway.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from gateway.proxy.config import Pool, Route, Target
    from gateway.proxy.worker import Worker

log = logging.getLogger(__name__)

BUFFER_LIMIT = 256 * 1024
REPLAY_LIMIT = 64 * 1024
MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
HEADER_TIMEOUT_S = 30.0
KEEPALIVE_TIMEOUT_S = 75.0


class Rejected(Exception):
    """Raised inside a parser callback to stop parsing and answer with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "closed",
        "ex",
        "header_bytes",
        "header_count",
        "last_activity",
        "parser",
        "parsing",
        "peer",
        "queue",
        "reading_head",
        "shutting_down",
        "transport",
        "tunnel",
        "upstream_paused",
        "worker",
        "write_paused",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        # Per-request state: the exchange being answered, the one being parsed, pipelined ones waiting.
        self.ex: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.tunnel: Exchange | None = None
        self.header_bytes = 0
        self.header_count = 0
        self.reading_head = False
        self.last_activity = CLOCK.now
        self.closed = False
        self.shutting_down = False
        self.upstream_paused = False
        # The client's socket buffer is full: the upstream serving it must not be read meanwhile.
        self.write_paused = False
        self.peer = b"unknown"

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.worker.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        worker = self.worker
        worker.connections.discard(self)
        if worker.all_closed is not None and not worker.connections:
            worker.all_closed.set()
        for exchange in (self.ex, self.parsing, *self.queue):
            if exchange is not None and not exchange.finished:
                exchange.client_gone()
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        self.last_activity = CLOCK.now
        if self.tunnel is not None:
            self.tunnel.tunnel_in(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            exchange = self.parsing
            if exchange is not None and exchange.upgrade and not exchange.finished:
                self.tunnel = exchange
                rest = data[upgrade.args[0] :]
                if rest:
                    exchange.tunnel_in(rest)
            else:
                self.fail(400, "unexpected upgrade")
        except httptools.HttpParserError as exc:
            # httptools wraps an exception raised in a callback; ours carry the status to answer.
            cause = exc.__context__
            if isinstance(cause, Rejected):
                self.fail(cause.status, cause.message)
            else:
                self.fail(400, f"malformed HTTP request: {exc}")
        except Rejected as rejected:
            self.fail(rejected.status, rejected.message)

    def pause_writing(self) -> None:
        self.write_paused = True
        exchange = self.ex
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        exchange = self.ex
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    # Flow control towards the upstream (the upstream socket is full, or nothing can take the body yet)

    def pause_reading_for_upstream(self) -> None:
        if not self.upstream_paused and not self.closed:
            self.upstream_paused = True
            self.transport.pause_reading()

    def resume_reading_for_upstream(self) -> None:
        if self.upstream_paused and not self.closed:
            self.upstream_paused = False
            self.transport.resume_reading()

    # Parser callbacks

    def on_message_begin(self) -> None:
        self.parsing = Exchange(self)
        self.header_bytes = 0
        self.header_count = 0
        self.reading_head = True

    def on_url(self, url: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        exchange.url += url
        if len(exchange.url) > MAX_URL_BYTES:
            raise Rejected(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        self.header_count += 1
        if self.header_bytes > MAX_HEADER_BYTES or self.header_count > MAX_HEADERS:
            raise Rejected(431, "request header fields too large")
        exchange = self.parsing
        assert exchange is not None
        name = name.lower()
        if name not in REWRITTEN:
            # Forwarded as is: the upstream request head is built here, header by header.
            exchange.headers += (name, b": ", value, b"\r\n")
        headers = exchange.hmap
        if name in headers:
            if name == b"host" or name == b"content-length" or name == b"transfer-encoding":
                raise Rejected(400, f"duplicate {name.decode()} header")
            headers[name] = headers[name] + b", " + value
        else:
            headers[name] = value

    def on_headers_complete(self) -> None:
        self.reading_head = False
        exchange = self.parsing
        assert exchange is not None
        parser = self.parser
        exchange.method = parser.get_method()
        exchange.keep_alive = parser.should_keep_alive() and not self.shutting_down
        exchange.http10 = parser.get_http_version() == "1.0"
        exchange.upgrade = parser.should_upgrade()
        if self.ex is None:
            self.ex = exchange
            exchange.start()
        else:
            # A pipelined request: answered once the current one is done; stop reading meanwhile.
            self.queue.append(exchange)
            self.pause_reading_for_upstream()

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.request_body(body)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is not None:
            exchange.request_complete()

    # Exchanges

    def exchange_done(self, exchange: Exchange) -> None:
        if self.ex is not exchange:
            return
        self.ex = None
        if self.closed:
            return
        if not exchange.keep_alive or self.shutting_down or (not exchange.request_done and exchange.has_body):
            self.transport.close()
            self.closed = True
            return
        self.resume_reading_for_upstream()
        if self.queue:
            self.ex = self.queue.popleft()
            if self.queue:
                self.pause_reading_for_upstream()
            self.ex.start()

    def fail(self, status: int, message: str) -> None:
        """A protocol error: answer it if no response has started, then close."""
        exchange = self.parsing if self.parsing is not None and not self.parsing.finished else self.ex
        if exchange is not None and exchange.headers_sent:
            self.transport.abort()
            return
        if exchange is not None and not exchange.finished:
            exchange.keep_alive = False
            exchange.respond(status, message)
        elif not self.closed:
            self.transport.write(error_response(status, message, self.worker.ids.next()))
        if not self.closed:
            self.transport.close()
            self.closed = True

    def sweep(self, now: float) -> None:
        """Called by the worker's timer: idle keep-alive, slow request heads, upstream read timeouts."""
        exchange = self.ex
        if exchange is None:
            if self.reading_head:
                if now - self.last_activity > HEADER_TIMEOUT_S:
                    self.fail(408, "request head not received in time")
            elif now - self.last_activity > KEEPALIVE_TIMEOUT_S or self.shutting_down:
                self.transport.close()
                self.closed = True
            return
        idle_for = now - exchange.upstream_seen
        if (
            exchange.upstream is not None
            and self.tunnel is None
            and not exchange.finished
            and idle_for > exchange.read_timeout
        ):
            exchange.upstream_timeout()


class Exchange:
    """One request and its response."""

    __slots__ = (
        "attempts",
        "body_in",
        "bytes_out",
        "chunked_in",
        "chunked_out",
        "client",
        "connect_task",
        "content_length",
        "expect",
        "finished",
        "has_body",
        "head",
        "headers",
        "headers_sent",
        "hold_head",
        "held_at",
        "hmap",
        "hold_deadline",
        "http10",
        "keep_alive",
        "method",
        "out",
        "pending",
        "pending_size",
        "pool",
        "read_timeout",
        "released_at",
        "replay",
        "request_done",
        "request_id",
        "resp_chunked",
        "resp_close",
        "resp_close_delimited",
        "resp_headers",
        "resp_length",
        "resp_request_id",
        "resp_upgrade",
        "route",
        "sent_at",
        "start_path",
        "started",
        "status",
        "target",
        "tried",
        "upgrade",
        "upstream",
        "upstream_head_keep_alive",
        "upstream_seen",
        "url",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.url = b""
        # Request header lines to forward (name, ": ", value, CRLF), and every header by lowercase name.
        self.headers: list[bytes] = []
        self.hmap: dict[bytes, bytes] = {}
        self.method = b"GET"
        self.keep_alive = True
        self.http10 = False
        self.upgrade = False
        self.route: Route | None = None
        self.pool: Pool | None = None
        self.target: Target | None = None
        self.upstream: UpstreamConnection | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.head = b""
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.replay: list[bytes] | None = []
        self.request_done = False
        self.has_body = False
        self.chunked_in = False
        self.content_length = -1
        self.expect = False
        self.body_in = 0
        self.bytes_out = 0
        # The response head as it arrives: forwarded header lines, and what the proxy noted on the way.
        self.resp_headers: list[bytes] = []
        self.resp_length: bytes | None = None
        self.resp_upgrade: bytes | None = None
        self.resp_chunked = False
        self.resp_close = False
        self.resp_request_id = False
        # Response bytes for the client collected during one upstream read, written with one syscall.
        self.out: list[bytes] = []
        self.headers_sent = False
        # A response head with a Content-Length waits for its first body bytes before it is written, so
        # an upstream dying in between is still a clean failure that can be retried or answered.
        self.hold_head = False
        self.chunked_out = False
        self.resp_close_delimited = False
        self.upstream_head_keep_alive = False
        self.status = 0
        self.finished = False
        self.tried: tuple[Target, ...] = ()
        self.attempts = 0
        self.read_timeout = 60.0
        self.upstream_seen = 0.0
        self.request_id = b""
        self.started = perf_counter()
        self.held_at = 0.0
        self.released_at = 0.0
        self.hold_deadline = 0.0
        self.sent_at = 0.0
        self.start_path: str | None = None

    # Admission: validate, route, authenticate, limit

    def start(self) -> None:
        hmap = self.hmap
        worker = self.client.worker
        self.request_id = hmap.get(b"x-request-id") or worker.ids.next()
        transfer_encoding = hmap.get(b"transfer-encoding")
        if transfer_encoding is not None:
            # httptools already refuses TE together with Content-Length; we forward only plain chunked.
            if transfer_encoding.strip().lower() != b"chunked" or self.http10:
                return self.reject(400, "unsupported Transfer-Encoding")
            self.chunked_in = self.has_body = True
        length = hmap.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return self.reject(400, "invalid Content-Length")
            self.content_length = int(length)
            self.has_body = self.content_length > 0
        host = hmap.get(b"host")
        if host is None:
            if not self.http10:
                return self.reject(400, "missing Host header")
            host = b""
        expect = hmap.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                return self.reject(417, "unsupported Expect")
            self.expect = self.has_body
        url = self.url
        if not url.startswith(b"/"):
            return self.reject(400, "only origin-form request targets are accepted")
        query = url.find(b"?")
        path = url if query < 0 else url[:query]
        colon = host.rfind(b":")
        hostname = host[:colon] if colon > 0 and host[-1:] != b"]" else host
        route = worker.config.match(hostname.lower(), path, self.method)
        if route is None:
            return self.reject(404, "no route matches this request")
        self.route = route
        auth = route.auth
        if auth is not None:
            verdict = auth.check(hmap)
            if verdict is not None:
                if isinstance(verdict, tuple):
                    extra = ((b"www-authenticate", b"Bearer"),) if verdict[0] == 401 else ()
                    return self.reject(verdict[0], verdict[1], extra)
                self.client.pause_reading_for_upstream()
                worker.spawn(self._await_auth(verdict, auth))
                return None
        return self.admit(path)

    async def _await_auth(self, pending: asyncio.Future[None] | object, auth: object) -> None:
        # A failed JWKS fetch is logged where it happens; the re-check below answers the client.
        with suppress(Exception):
            await pending  # type: ignore[misc]
        if self.finished or self.route is None or self.route.auth is None:
            return
        verdict = self.route.auth.check(self.hmap)
        if verdict is not None and not isinstance(verdict, tuple):
            verdict = (401, "token signed by an unknown key")
        self.client.resume_reading_for_upstream()
        if verdict is not None:
            self.reject(verdict[0], verdict[1], ((b"www-authenticate", b"Bearer"),) if verdict[0] == 401 else ())
            return
        url = self.url
        query = url.find(b"?")
        self.admit(url if query < 0 else url[:query])

    def admit(self, path: bytes) -> None:
        route = self.route
        assert route is not None
        if route.limiter is not None and not route.limiter.take():
            return self.reject(429, "rate limit exceeded", ((b"retry-after", b"1"),))
        if route.max_concurrency is not None and route.in_flight >= route.max_concurrency:
            return self.reject(429, "concurrency limit reached", ((b"retry-after", b"1"),))
        if route.max_body is not None and self.content_length > route.max_body:
            return self.reject(413, f"request body larger than {route.max_body} bytes")
        route.in_flight += 1
        self.head = self._build_head(route, path)
        if self.method not in IDEMPOTENT:
            self.replay = None
        pool = self.client.worker.config.pools.get(route.service)
        self.pool = pool
        if pool is not None:
            self.read_timeout = route.read_timeout or pool.read_timeout
            target = pool.pick()
            if target is not None:
                return self.connect(target)
        if route.provisioner is not None:
            return self.hold(route)
        return self.respond(503, "no healthy upstream for this route", ((b"retry-after", b"5"),))

    def _build_head(self, route: Route, path: bytes) -> bytes:
        url = self.url
        if route.strip_prefix and len(route.prefix) > 1:
            rest = url[len(route.prefix.rstrip(b"/")) :]
            url = rest if rest.startswith(b"/") else b"/" + rest
        peer = self.client.peer
        hmap = self.hmap
        host = hmap.get(b"host", b"")
        forwarded_for = hmap.get(b"x-forwarded-for")
        parts = [self.method, b" ", url, b" HTTP/1.1\r\n", *self.headers]
        node = b'"[%s]"' % peer if b":" in peer else peer
        parts += (
            b"x-forwarded-for: ",
            forwarded_for + b", " + peer if forwarded_for else peer,
            b"\r\nx-forwarded-proto: http\r\nx-forwarded-host: ",
            host,
            b"\r\nforwarded: for=",
            node,
            b';proto=http;host="',
            host,
            b'"\r\n',
        )
        if b"x-request-id" not in hmap:
            parts += (b"x-request-id: ", self.request_id, b"\r\n")
        if self.chunked_in:
            parts.append(b"transfer-encoding: chunked\r\n")
        if self.upgrade:
            parts += (b"connection: upgrade\r\nupgrade: ", hmap.get(b"upgrade", b""), b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # Cold start: wait for a target to be registered

    def hold(self, route: Route) -> None:
        if len(route.held) >= route.queue_size:
            return self.respond(503, "cold-start queue is full", ((b"retry-after", route.retry_after),))
        assert route.provisioner is not None
        self.held_at = perf_counter()
        self.hold_deadline = CLOCK.now + route.provisioner.timeout_s
        route.held.append(self)
        self.client.worker.held(route)

    def release(self) -> None:
        """A target became ready for the held request."""
        self.released_at = perf_counter()
        pool = self.client.worker.config.pools.get(self.route.service) if self.route else None
        self.pool = pool
        target = pool.pick() if pool is not None else None
        if target is None:
            self.respond(503, "no healthy upstream for this route", ((b"retry-after", b"5"),))
            return
        if pool is not None:
            self.read_timeout = (self.route.read_timeout if self.route else None) or pool.read_timeout
        self.connect(target)

    def reject_held(self, status: int, message: str) -> None:
        route = self.route
        retry_after = route.retry_after if route is not None else b"5"
        self.released_at = perf_counter()
        self.respond(status, message, ((b"retry-after", retry_after),))

    # Upstream connection

    def connect(self, target: Target) -> None:
        self.target = target
        self.tried += (target,)
        self.attempts += 1
        target.in_flight += 1
        if target.fresh_start is not None:
            self.start_path, target.fresh_start = target.fresh_start, None
        idle = target.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.attach(conn)
                return
        self.connect_task = self.client.worker.spawn(self._open(target))

    async def _open(self, target: Target) -> None:
        pool = self.pool
        route = self.route
        timeout = (route.connect_timeout if route else None) or (pool.connect_timeout if pool else 5.0)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(target), target.host, target.port), timeout
            )
        except (OSError, TimeoutError) as exc:
            self.connect_task = None
            if not self.finished:
                timed_out = isinstance(exc, TimeoutError)
                self.upstream_failed(
                    504 if timed_out else 502, "upstream connect timeout" if timed_out else "upstream unreachable"
                )
            return
        self.connect_task = None
        if self.finished or self.target is not target:
            conn.close()
            return
        self.attach(conn)

    def attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        conn.exchange = self
        conn.served += 1
        if self.client.write_paused:
            conn.pause_reading()
        self.upstream_seen = CLOCK.now
        self.sent_at = perf_counter()
        transport = conn.transport
        assert transport is not None
        if self.pending:
            transport.write(b"".join((self.head, *self.pending)))
            self.pending = []
            self.pending_size = 0
        else:
            transport.write(self.head)
        if self.expect and self.body_in == 0 and not self.request_done:
            self.expect = False
            self.client.transport.write(CONTINUE)
        self.client.resume_reading_for_upstream()

    def upstream_failed(self, status: int, message: str) -> None:
        """The upstream failed before answering: retry an idempotent request elsewhere, else answer."""
        target, pool = self.target, self.pool
        if target is not None:
            target.in_flight -= 1
            self.target = None
            if pool is not None:
                pool.report_failure(target)
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()
        if self.headers_sent:
            self.finish_aborted()
            return
        self._forget_response()
        if pool is not None and self.replay is not None and self.attempts <= pool.retries:
            retry = pool.pick(self.tried)
            if retry is not None:
                self.pending = list(self.replay)
                self.pending_size = sum(len(chunk) for chunk in self.pending)
                self.connect(retry)
                return
        self.respond(status, message)

    def forget_response_headers(self) -> None:
        self.resp_headers = []
        self.resp_length = self.resp_upgrade = None
        self.resp_chunked = self.resp_close = self.resp_request_id = False

    def _forget_response(self) -> None:
        """Drop a response head that was received but never written (before a retry or an error)."""
        self.out = []
        self.forget_response_headers()
        self.status = 0
        self.hold_head = self.chunked_out = self.resp_close_delimited = False

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if self.finished or self.upstream is not conn:
            return
        if self.client.tunnel is self:
            self.finish(False)
            return
        if not self.headers_sent:
            if conn.served > 1 and self.replay is not None and self.status == 0:
                # A pooled connection the upstream closed while idle: not the target's fault; retry once.
                target = self.target
                assert target is not None
                target.in_flight -= 1
                self.upstream = None
                self.attempts -= 1
                self.tried = tuple(t for t in self.tried if t is not target)
                self.pending = list(self.replay)
                self.pending_size = sum(len(chunk) for chunk in self.pending)
                self.connect(target)
                return
            self.upstream = None
            conn.exchange = None
            self.upstream_failed(502, "upstream closed the connection")
            return
        if self.resp_close_delimited:
            if self.chunked_out:
                self.out.append(LAST_CHUNK)
            self.flush()
            self.finish(False)
            return
        self.finish_aborted()

    def upstream_broken(self, conn: UpstreamConnection, message: str) -> None:
        self.upstream_failed(502, message)

    def upstream_timeout(self) -> None:
        if self.headers_sent:
            self.finish_aborted()
        else:
            self.replay = None  # a read timeout is not retried: the upstream may have acted on it
            self.upstream_failed(504, "upstream read timeout")

    # Request body

    def request_body(self, body: bytes) -> None:
        if self.finished:
            return
        size = len(body)
        self.body_in += size
        route = self.route
        if route is not None and route.max_body is not None and self.body_in > route.max_body:
            raise Rejected(413, f"request body larger than {route.max_body} bytes")
        data = b"%x\r\n%s\r\n" % (size, body) if self.chunked_in else body
        self._forward(data)

    def request_complete(self) -> None:
        self.request_done = True
        if self.finished:
            return
        if self.chunked_in:
            self._forward(LAST_CHUNK)

    def _forward(self, data: bytes) -> None:
        replay = self.replay
        if replay is not None:
            replay.append(data)
            if len(replay) > 64 or sum(len(chunk) for chunk in replay) > REPLAY_LIMIT:
                self.replay = None
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            # A long upload is activity too: the read timeout measures silence in both directions.
            self.upstream_seen = CLOCK.now
            upstream.transport.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > BUFFER_LIMIT:
            self.client.pause_reading_for_upstream()

    # Tunnel (after 101 Switching Protocols)

    def tunnel_in(self, data: bytes) -> None:
        self.body_in += len(data)
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(data)
        else:
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > BUFFER_LIMIT:
                self.client.pause_reading_for_upstream()

    def tunnel_out(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if not self.client.closed:
            self.client.transport.write(data)

    # Response

    def response_header(self, name: bytes, value: bytes) -> None:
        """One upstream response header: forwarded as is unless the proxy must look at it or drop it."""
        lower = name.lower()
        kind = RESPONSE_HEADER_KINDS.get(lower)
        if kind is None:
            self.resp_headers += (name, b": ", value, b"\r\n")
        elif kind == H_LENGTH:
            self.resp_length = value
            self.resp_headers += (name, b": ", value, b"\r\n")
        elif kind == H_REQUEST_ID:
            self.resp_request_id = True
            self.resp_headers += (name, b": ", value, b"\r\n")
        elif kind == H_CHUNKED:
            self.resp_chunked = True
        elif kind == H_CONNECTION:
            self.resp_close = self.resp_close or b"close" in value.lower()
        elif kind == H_UPGRADE:
            self.resp_upgrade = value

    def response_head(self, status: int, http11: bool) -> None:
        self.status = status
        content_length = self.resp_length
        chunked = self.resp_chunked
        close = self.resp_close or not http11
        parts = self.resp_headers
        parts.insert(0, status_line(status))
        if status == 101 and self.resp_upgrade is not None:
            parts += (b"upgrade: ", self.resp_upgrade, b"\r\n")
        self.upstream_head_keep_alive = not close
        no_body = self.method == b"HEAD" or status == 204 or status == 304 or status == 101
        if status == 101:
            parts.append(b"connection: upgrade\r\n")
        elif not no_body and content_length is None:
            self.resp_close_delimited = not chunked
            if self.http10:
                self.keep_alive = False
            else:
                self.chunked_out = True
                parts.append(b"transfer-encoding: chunked\r\n")
        if not self.resp_request_id:
            parts += (b"x-request-id: ", self.request_id, b"\r\n")
        if status != 101:
            if self.client.shutting_down:
                self.keep_alive = False
            parts.append(b"connection: keep-alive\r\n\r\n" if self.keep_alive else b"connection: close\r\n\r\n")
        else:
            parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        self.hold_head = content_length is not None and content_length != b"0" and not no_body
        if status == 101:
            self.flush()

    def response_body(self, body: bytes) -> None:
        self.hold_head = False
        self.bytes_out += len(body)
        if self.chunked_out:
            self.out.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def flush(self) -> None:
        """Write what this upstream read produced for the client (called after each parser feed)."""
        out = self.out
        if out and not self.hold_head:
            if not self.client.closed:
                self.client.transport.write(out[0] if len(out) == 1 else b"".join(out))
            self.headers_sent = True
            self.out = []

    def response_complete(self, upstream_keep_alive: bool) -> None:
        if self.status == 101:
            return
        if self.chunked_out:
            self.out.append(LAST_CHUNK)
        self.hold_head = False
        self.flush()
        self.finish(upstream_keep_alive and self.request_done)

    # Endings

    def finish(self, reusable: bool) -> None:
        if self.finished:
            return
        self.finished = True
        upstream, self.upstream = self.upstream, None
        target = self.target
        if target is not None:
            target.in_flight -= 1
            if self.pool is not None and self.status < 500:
                self.pool.report_success(target)
        if upstream is not None:
            upstream.exchange = None
            # Never park a connection whose reading a slow client paused: resume it first.
            upstream.resume_reading()
            if reusable and target is not None and not target.draining and not upstream.closed:
                if len(target.idle) < 512:
                    target.idle.append(upstream)
                else:
                    upstream.close()
            else:
                upstream.close()
        route = self.route
        if route is not None and self.head:
            route.in_flight -= 1
        self.client.worker.observe(self)
        if self.client.tunnel is self:
            self.client.tunnel = None
            if not self.client.closed:
                self.client.transport.close()
                self.client.closed = True
        self.client.exchange_done(self)

    def finish_aborted(self) -> None:
        """The response broke half-way: the client cannot be told cleanly, so its connection is cut."""
        self.flush()
        self.keep_alive = False
        upstream = self.upstream
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()
            self.upstream = None
        if not self.client.closed:
            self.client.transport.abort()
            self.client.closed = True
        self.finish(False)

    def client_gone(self) -> None:
        """The client disconnected: stop everything this exchange holds."""
        if self.finished:
            return
        if self.status == 0:
            self.status = 499
        route = self.route
        if route is not None and self in route.held:
            route.held.remove(self)
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        upstream = self.upstream
        if upstream is not None:
            upstream.exchange = None
            upstream.abort()
            self.upstream = None
        self.finish(False)

    def reject(self, status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Refuse before admission (no route, auth, limits, bad request). After a malformed request
        the connection's framing cannot be trusted, so it is closed."""
        if status == 400:
            self.keep_alive = False
        self.respond(status, message, extra)

    def respond(self, status: int, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        if self.finished:
            return
        if self.headers_sent:
            self.finish_aborted()
            return
        self._forget_response()
        if not self.request_id:
            self.request_id = self.client.worker.ids.next()
        if self.has_body and not self.request_done:
            self.keep_alive = False
        if self.target is not None:
            self.target.in_flight -= 1
            self.target = None
        self.status = status
        self.headers_sent = True
        if not self.client.closed:
            self.client.transport.write(
                error_response(
                    status,
                    message,
                    self.request_id,
                    close=not self.keep_alive,
                    head_only=self.method == b"HEAD",
                    extra=extra,
                )
            )
        self.finish(False)
