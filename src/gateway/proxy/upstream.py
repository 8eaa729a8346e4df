"""One pooled keep-alive connection to an upstream target. It parses the response with httptools and
hands every event to the exchange it currently serves; between exchanges it idles in its target's pool."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress
from typing import TYPE_CHECKING

import httptools

from gateway.proxy._http import RESPONSE_HEADER_KINDS
from gateway.proxy.clock import CLOCK

if TYPE_CHECKING:
    from gateway.proxy.config import Target
    from gateway.proxy.protocol import Exchange


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "closed",
        "exchange",
        "head_only",
        "interim",
        "parser",
        "reading_paused",
        "served",
        "target",
        "transport",
        "tunnel",
    )

    def __init__(self, target: Target) -> None:
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.served = 0
        self.closed = False
        self.tunnel = False
        self.interim = False
        self.head_only = False
        self.reading_paused = False

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()
        self.closed = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    # Protocol interface

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.target.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        target = self.target
        target.conns.discard(self)
        if self in target.idle:
            target.idle.remove(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.upstream_lost(self)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # An idle connection has nothing to say; anything it sends makes it unusable.
            self.close()
            return
        if self.tunnel:
            exchange.tunnel_out(data)
            return
        exchange.upstream_seen = CLOCK.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.tunnel = True
            rest = data[upgrade.args[0] :]
            if rest and self.exchange is not None:
                self.exchange.tunnel_out(rest)
        except httptools.HttpParserError:
            if self.exchange is not None:
                self.exchange.upstream_broken(self, "malformed response from upstream")
        # The exchange may have finished (and been detached) inside the feed; it flushed then.
        if self.exchange is exchange:
            exchange.flush()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client.resume_reading_for_upstream()

    # Parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        # Exchange.response_header, inlined: this runs for every response header.
        exchange = self.exchange
        if exchange is None:
            return
        kind = RESPONSE_HEADER_KINDS.get(name.lower())
        if kind is None:
            exchange.resp_headers += (name, b": ", value, b"\r\n")
        else:
            exchange.response_header(name, value)

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim response (we never forward Expect, but an upstream may still send 100).
            self.interim = True
            exchange.forget_response_headers()
            return
        exchange.response_head(status, self.parser.get_http_version() == "1.1")
        if exchange.method == b"HEAD" and self.exchange is exchange:
            # llhttp cannot know a HEAD response has no body: finish here and start a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
            exchange.response_complete(exchange.upstream_head_keep_alive)

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.response_body(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        exchange = self.exchange
        if exchange is not None and not self.tunnel:
            # Keep-alive is only reported correctly here (see notes/gateway-measured-here.md).
            exchange.response_complete(self.parser.should_keep_alive())
