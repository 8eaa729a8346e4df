"""Morty's Python runtime: a small HTTP/1.1 server that calls the user's ``handler(request)``.

Run as a script (``python3 /opt/morty/runtimes/python/server.py``) next to ``morty_runtime.py``, which holds the
`Request`/`Response` API that handlers import. Standard library only: function images have nothing but python3.

Configuration (environment):

    MORTY_PORT          port to listen on (8080)
    MORTY_HOST          address to listen on (0.0.0.0; an address containing ":" listens on IPv6)
    MORTY_HANDLER       ``module.function`` to call (main.handler); the module may be dotted
    MORTY_CODE_DIR      directory holding the user's code, put first on sys.path (/var/task)
    MORTY_CONCURRENCY   requests handled at once (1): 1 calls a sync handler on the event loop, N > 1 in N threads
    MORTY_MAX_BODY      largest request body accepted, in bytes (33554432); larger gets 413

Start order: the user's module is imported *before* the socket listens, so "accepts connections" (alpha's readiness
signal) means "ready to serve", and a snapshot taken at readiness already holds the imported code. Nothing resolves a
name: the listening socket is made and bound here, by address (``http.server.HTTPServer.server_bind`` would call
``socket.getfqdn()``, a reverse DNS lookup that can stall for seconds in a VM without a resolver).

Why asyncio streams and not ``http.server.ThreadingHTTPServer``: measured with ``wrk -t1 -c{1,10,50} -d4s`` on this
2-core machine against minimal versions of both, asyncio with the handler called on the loop served 5.8k / 7.2k /
10k requests/s, against 3.4k / 4.5k / 4.6k (and a 1.8 s max latency at c=50) for ThreadingHTTPServer with keep-alive
and TCP_NODELAY, whose per-request cost is dominated by ``email``-based header parsing and per-connection threads.
asyncio with the handler in a thread pool sat between the two (2.8k-5.7k), which is why concurrency 1 (the default)
calls the handler inline. An ``async def handler`` is awaited on the loop.

Invocations: each request carries an invocation id in ``X-Morty-Invocation-Id`` (else the gateway's ``X-Request-Id``;
one is generated when both are absent or malformed), passed to the handler as ``request.invocation_id`` and echoed
in the response.

Output framing, the contract with alpha (``morty.alpha``): while a handler runs, every complete line it writes to
``sys.stdout`` or ``sys.stderr`` leaves the process as::

    \\x1eMORTY <invocation-id> <stream>\\x1f<line>\\n

where ``<stream>`` is ``stdout`` or ``stderr``, ``\\x1e`` is ASCII RS and ``\\x1f`` ASCII US; an unterminated last
line is flushed when the invocation ends (readers must split on ``\\n`` only: ``str.splitlines`` also breaks at
``\\x1e``). Output written outside any invocation (start-up, background threads not
started by a handler) is passed through unframed. Attribution follows ``contextvars``: tasks spawned by an async
handler inherit it, and so do threads started while a handler runs (this runtime makes ``Thread.start`` run the new
thread in a copy of the starter's context, as Python 3.14's ``thread_inherit_context`` does); a worker thread of a
pool created *before* the invocation does not. Bytes written straight to file descriptors 1 and 2 (C extensions,
subprocesses, ``sys.stdout.buffer``) are not attributed. A handler's exception produces a 500 with a JSON body
naming only the exception type and invocation; the traceback goes to stderr, framed with the invocation id.
"""

from __future__ import annotations

import asyncio
import contextvars
import http
import importlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING or __package__:
    from . import morty_runtime

    # User code imports the top-level name; make it the same module, so isinstance(result, Response) holds.
    sys.modules.setdefault("morty_runtime", morty_runtime)
else:  # run as a script: morty_runtime.py sits next to this file, on sys.path[0]
    import morty_runtime

Headers = morty_runtime.Headers
QueryParams = morty_runtime.QueryParams
Request = morty_runtime.Request
Response = morty_runtime.Response

INVOCATION_HEADER = "X-Morty-Invocation-Id"
REQUEST_ID_HEADER = "X-Request-Id"
"""The gateway's request id, which its invocation record carries: the invocation id when no other is given."""
FRAME_START = "\x1eMORTY "
FRAME_SEPARATOR = "\x1f"
MAX_HEAD = 64 * 1024
MAX_INVOCATION_ID = 128
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:")
# Headers the server owns: a handler's values for them are dropped, not sent twice.
_OWN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "date", INVOCATION_HEADER.lower()})
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
_NO_BODY_STATUSES = frozenset({204, 304})
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"", b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")

Handler = Callable[[morty_runtime.Request], object]


# --- Invocation attribution of output ------------------------------------------------------------------------------


class _Invocation:
    """The invocation a piece of code runs for, with its unterminated output per stream."""

    __slots__ = ("id", "lock", "pending")

    def __init__(self, invocation_id: str) -> None:
        self.id = invocation_id
        self.lock = threading.Lock()
        self.pending = {"stdout": "", "stderr": ""}


_current: contextvars.ContextVar[_Invocation | None] = contextvars.ContextVar("morty_invocation", default=None)


class FramedStream:
    """A ``sys.stdout``/``sys.stderr`` stand-in that frames lines written during an invocation (see module doc)."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._stream = stream
        self._name = name
        self._lock = threading.Lock()
        self._at_line_start = True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        invocation = _current.get()
        if invocation is None:
            with self._lock:
                self._stream.write(text)
                if text:
                    self._at_line_start = text.endswith("\n")
                if "\n" in text:
                    self._stream.flush()
            return len(text)
        with invocation.lock:
            pending = invocation.pending[self._name] + text
            complete, newline, rest = pending.rpartition("\n")
            invocation.pending[self._name] = rest
        if newline:
            self._emit(invocation.id, complete.split("\n"))
        return len(text)

    def end_invocation(self, invocation: _Invocation) -> None:
        """Emit the invocation's unterminated last line, if any."""
        with invocation.lock:
            rest, invocation.pending[self._name] = invocation.pending[self._name], ""
        if rest:
            self._emit(invocation.id, [rest])

    def _emit(self, invocation_id: str, lines: list[str]) -> None:
        prefix = f"{FRAME_START}{invocation_id} {self._name}{FRAME_SEPARATOR}"
        framed = "".join([prefix + line + "\n" for line in lines])
        with self._lock:
            if not self._at_line_start:  # never glue a frame onto a half-written unframed line
                framed = "\n" + framed
            self._stream.write(framed)
            self._stream.flush()
            self._at_line_start = True

    def flush(self) -> None:
        self._stream.flush()

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def writable(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, errors, buffer ...
        return getattr(self._stream, name)


def install_output_framing() -> tuple[FramedStream, FramedStream]:
    """Replace sys.stdout/sys.stderr with framing wrappers and make new threads inherit the invocation."""
    stdout = FramedStream(sys.stdout, "stdout")
    stderr = FramedStream(sys.stderr, "stderr")
    sys.stdout = cast(TextIO, stdout)
    sys.stderr = cast(TextIO, stderr)

    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if _current.get() is not None:
            context = contextvars.copy_context()
            run = self.run
            self.run = lambda: context.run(run)  # type: ignore[method-assign]
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]
    return stdout, stderr


# --- HTTP -------------------------------------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def new_invocation_id() -> str:
    return os.urandom(12).hex()


def _invocation_id(value: str | None) -> str:
    if value and len(value) <= MAX_INVOCATION_ID and _ID_CHARS.issuperset(value):
        return value
    return new_invocation_id()


_date_cache: list[Any] = [0, b""]


def _http_date() -> bytes:
    now = int(time.time())
    if now != _date_cache[0]:
        t = time.gmtime(now)
        _date_cache[:] = [
            now,
            b"%s, %02d %s %04d %02d:%02d:%02d GMT"
            % (_DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec),
        ]
    return cast(bytes, _date_cache[1])


def _encode_headers(headers: list[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if name.lower() in _OWN_HEADERS:
            continue
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line or not name or ":" in name:
            raise ValueError(f"invalid response header {name!r}")
        lines.append(line.encode("latin-1") + b"\r\n")
    return b"".join(lines)


class _Exchange:
    """One request's outcome, ready to serialize."""

    __slots__ = ("body", "head", "status")

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status = status
        self.head = head  # the handler's own headers, encoded
        self.body = body


def _parse_head(head: bytes, client: tuple[str, int] | None) -> tuple[morty_runtime.Request, str, bool]:
    """Parse a request head into a body-less Request, the HTTP version, and whether it asks for keep-alive."""
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("latin-1").split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not method.isalpha():
        raise _BadRequest(400, "unsupported request line")
    pairs = []
    for raw in lines[1:]:
        name, colon, value = raw.partition(b":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(400, "malformed header line")
        pairs.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    headers = Headers(pairs)
    if target.startswith(("http://", "https://")):  # absolute-form: keep the path and query only
        target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
    raw_path, _, query_string = target.partition("?")
    raw_path = raw_path.partition("#")[0]
    request = Request(
        method,
        unquote(raw_path),
        raw_path=raw_path,
        query_string=query_string,
        query=QueryParams(parse_qsl(query_string, keep_blank_values=True)),
        headers=headers,
        invocation_id=_invocation_id(headers.get(INVOCATION_HEADER) or headers.get(REQUEST_ID_HEADER)),
        client=client,
    )
    tokens = {token.strip().lower() for token in headers.get("connection", "").split(",")}
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    return request, version, keep_alive


class Server:
    """Serves HTTP/1.1 connections, one request at a time per connection, calling ``handler`` per request."""

    def __init__(
        self, handler: Handler, *, concurrency: int = 1, max_body: int = 32 << 20, stdout: FramedStream | None = None
    ) -> None:
        self._handler = handler
        self._is_async = asyncio.iscoroutinefunction(handler)
        self._pool = ThreadPoolExecutor(concurrency, "morty-handler") if concurrency > 1 else None
        self._max_body = max_body
        self._streams = [s for s in (stdout, cast(Any, sys.stderr)) if isinstance(s, FramedStream)]
        self._stderr = cast(TextIO, sys.stderr)
        # Per-server state
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.StreamWriter] = set()

    # Connection handling

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
        try:
            while not self._closing:
                self._idle.add(writer)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed between requests
                except asyncio.LimitOverrunError:
                    writer.write(self._plain_error(431, "request head too large"))
                    return
                finally:
                    self._idle.discard(writer)
                try:
                    request, version, keep_alive = _parse_head(head, client)
                    request.body = await self._read_body(request, version, reader, writer)
                except _BadRequest as exc:
                    writer.write(self._plain_error(exc.status, str(exc)))
                    return
                exchange = await self._call(request)
                keep_alive = keep_alive and not self._closing
                writer.write(self._serialize(exchange, request, version, keep_alive))
                if writer.transport.get_write_buffer_size() > 65536:
                    await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _read_body(
        self, request: morty_runtime.Request, version: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        headers = request.headers
        chunked = False
        length = 0
        if "transfer-encoding" in headers:
            codings = ",".join(headers.getall("transfer-encoding")).lower()
            if codings.rsplit(",", 1)[-1].strip() != "chunked":
                raise _BadRequest(400, "unsupported transfer-encoding")
            chunked = True
        elif "content-length" in headers:
            values = {v.strip() for v in ",".join(headers.getall("content-length")).split(",")}
            value = values.pop()
            if values or not value.isdigit():
                raise _BadRequest(400, "invalid content-length")
            length = int(value)
            if length > self._max_body:
                raise _BadRequest(413, "request body too large")
        if not chunked and length == 0:
            return b""
        if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if not chunked:
            return await reader.readexactly(length)
        return await self._read_chunked(reader)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line[:-2].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest(400, "malformed chunk size") from None
            if size < 0:
                raise _BadRequest(400, "malformed chunk size")
            if size == 0:
                break
            total += size
            if total > self._max_body:
                raise _BadRequest(413, "request body too large")
            chunks.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise _BadRequest(400, "malformed chunk")
        for _ in range(100):  # trailers, ignored
            if await reader.readuntil(b"\r\n") == b"\r\n":
                return b"".join(chunks)
        raise _BadRequest(400, "too many trailers")

    # Calling the handler

    async def _call(self, request: morty_runtime.Request) -> _Exchange:
        if self._is_async:
            return await self._invoke_async(request)
        if self._pool is None:
            return self._invoke(request)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._invoke, request)

    def _invoke(self, request: morty_runtime.Request) -> _Exchange:
        invocation = _Invocation(request.invocation_id)
        token = _current.set(invocation)
        try:
            try:
                return self._exchange(self._handler(request))
            except (Exception, SystemExit) as exc:
                return self._failed(invocation, exc)
        finally:
            self._end(invocation)
            _current.reset(token)

    async def _invoke_async(self, request: morty_runtime.Request) -> _Exchange:
        invocation = _Invocation(request.invocation_id)
        token = _current.set(invocation)
        try:
            try:
                return self._exchange(await cast(Awaitable[object], self._handler(request)))
            except (Exception, SystemExit) as exc:
                return self._failed(invocation, exc)
        finally:
            self._end(invocation)
            _current.reset(token)

    @staticmethod
    def _exchange(result: object) -> _Exchange:
        response = Response.from_result(result)
        return _Exchange(response.status, _encode_headers(response.headers), response.body)

    def _failed(self, invocation: _Invocation, exc: BaseException) -> _Exchange:
        # The invocation is still current: the traceback leaves framed with its id, on stderr, never to the client.
        text = "".join(traceback.format_exception(exc))
        self._stderr.write(f"handler raised {type(exc).__name__} (500)\n{text}")
        error = {"error": "the function's handler raised an exception", "type": type(exc).__name__}
        body = Response(500, None, {**error, "invocation": invocation.id})
        return _Exchange(500, _encode_headers(body.headers), body.body)

    def _end(self, invocation: _Invocation) -> None:
        for stream in self._streams:
            stream.end_invocation(invocation)

    # Serialization

    @staticmethod
    def _serialize(exchange: _Exchange, request: morty_runtime.Request, version: str, keep_alive: bool) -> bytes:
        status = exchange.status
        parts = [
            _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
            exchange.head,
            b"Date: ",
            _http_date(),
            b"\r\nX-Morty-Invocation-Id: ",
            request.invocation_id.encode(),
            b"\r\n",
        ]
        body = exchange.body
        if status in _NO_BODY_STATUSES or status < 200:
            body = b""
        else:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif version == "HTTP/1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if request.method != "HEAD":
            parts.append(body)
        return b"".join(parts)

    @staticmethod
    def _plain_error(status: int, message: str) -> bytes:
        body = message.encode() + b"\n"
        return b"%sContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
            _STATUS_LINES[status],
            len(body),
            body,
        )

    # Lifecycle

    async def serve(self, sock: socket.socket) -> None:
        """Serve on ``sock`` until SIGTERM or SIGINT, then finish in-flight requests and return."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = await asyncio.start_server(self.connection, sock=sock, limit=MAX_HEAD, backlog=socket.SOMAXCONN)
        async with server:
            await stop.wait()
            self._closing = True
            server.close()
            for writer in list(self._idle):  # idle keep-alive connections: close now; busy ones close after replying
                writer.close()
            if self._tasks:
                await asyncio.wait(list(self._tasks))
        if self._pool is not None:
            self._pool.shutdown(wait=False)


# --- Start-up ---------------------------------------------------------------------------------------------------------


def load_handler(spec: str, code_dir: str) -> Handler:
    """Import ``module.function`` from ``code_dir`` (put first on sys.path) and return the function."""
    module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"MORTY_HANDLER must look like module.function, not {spec!r}")
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    module = importlib.import_module(module_name)
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise TypeError(f"{spec} is not a function (module {module.__file__})")
    return cast(Handler, handler)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket bound by address: no name resolution of any kind."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted runtime rebinds despite TIME_WAIT
    sock.bind((host, port))
    sock.listen(socket.SOMAXCONN)
    sock.setblocking(False)
    return sock


def main() -> int:
    env = os.environ
    stdout, _ = install_output_framing()
    spec = env.get("MORTY_HANDLER", "main.handler")
    try:
        handler = load_handler(spec, env.get("MORTY_CODE_DIR", "/var/task"))
    except BaseException:
        sys.stderr.write(f"morty: cannot load handler {spec}\n{traceback.format_exc()}")
        return 1
    host, port = env.get("MORTY_HOST", "0.0.0.0"), int(env.get("MORTY_PORT", "8080"))
    server = Server(
        handler,
        concurrency=max(1, int(env.get("MORTY_CONCURRENCY", "1"))),
        max_body=int(env.get("MORTY_MAX_BODY", str(32 << 20))),
        stdout=stdout,
    )
    sock = listen(host, port)
    sys.stderr.write(f"morty: python runtime serving {spec} on {host}:{port}\n")
    asyncio.run(server.serve(sock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
