"""The runtime's lifecycle: spawn in its own process group, readiness probe, restart policy, stop, reaping.

States: ``starting`` (spawned, not yet accepting) → ``ready`` (accepts TCP connections on the function port) →
on an unexpected exit ``restarting`` (backing off) → ``starting`` …; after ``max_restarts`` exits within
``restart_window`` seconds: ``failed`` (no more restarts; the reason is kept). A stop request (SIGTERM/SIGINT to alpha)
moves any state to ``stopping`` and, once the runtime is gone, ``stopped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._config import Config
from ._logs import LogStore, parse_line
from ._process import spawn_runtime

MAX_LINE = 64 * 1024  # a longer line is cut into several records
PIPE_DRAIN_TIMEOUT = 1.0  # after the runtime exits, wait this long for its last output (grandchildren may hold pipes)


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``signal SIGKILL``, from a `os.waitstatus_to_exitcode` value."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def shell_exit_code(code: int) -> int:
    """The exit status a shell would report: 128 + N for death by signal N."""
    return 128 - code if code < 0 else code


class _OutputProtocol(asyncio.Protocol):
    """Splits one of the runtime's pipes into lines and hands each to ``sink(stream, line)``."""

    def __init__(self, stream: str, sink: Callable[[str, str], None], done: asyncio.Future[None]) -> None:
        self._stream = stream
        self._sink = sink
        self._done = done
        self._buffer = bytearray()

    def itself(self) -> _OutputProtocol:
        """The protocol factory `loop.connect_read_pipe` wants, for this ready-made protocol."""
        return self

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if b"\n" not in data and len(self._buffer) < MAX_LINE:
            return
        lines: list[bytes] = [bytes(line) for line in self._buffer.split(b"\n")]
        self._buffer = bytearray(lines.pop())
        while len(self._buffer) >= MAX_LINE:
            lines.append(bytes(self._buffer[:MAX_LINE]))
            del self._buffer[:MAX_LINE]
        for raw in lines:
            self._sink(self._stream, raw.decode("utf-8", "replace").rstrip("\r"))

    def eof_received(self) -> bool | None:
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush()
        if not self._done.done():
            self._done.set_result(None)

    def _flush(self) -> None:
        if self._buffer:
            self._sink(self._stream, self._buffer.decode("utf-8", "replace").rstrip("\r"))
            self._buffer.clear()


class Supervisor:
    """Keeps one runtime process running (see the module docstring for its states)."""

    def __init__(
        self,
        config: Config,
        logs: LogStore,
        started: float,
        first: subprocess.Popen[bytes] | OSError | None = None,
    ) -> None:
        self._config = config
        self._logs = logs
        self._started = started  # time.monotonic() when alpha started
        # Global state
        self.state = "starting"
        self.restarts = 0
        self.reason: str | None = None
        self.ready_ms: float | None = None  # ms from alpha's start to the first readiness
        self.last_exit: int | None = None
        self._crashes: deque[float] = deque()
        self._stop = asyncio.Event()
        self._kill_timer: asyncio.TimerHandle | None = None
        self._last_stderr = ""
        # Per-runtime state
        self._first = first  # a runtime spawned before the event loop existed (see _process.EarlyStart)
        self._process: subprocess.Popen[bytes] | None = None
        self._exit: asyncio.Future[int] | None = None
        self._runtime_started = 0.0

    # Queries

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        pid = self.pid
        return {
            "status": self.state,
            "ready": self.state == "ready",
            "runtime_pid": pid,
            "restarts": self.restarts,
            "uptime_s": round(now - self._started, 3),
            "runtime_uptime_s": round(now - self._runtime_started, 3) if pid is not None else None,
            "ready_ms": self.ready_ms,
            "last_exit": self.last_exit,
            "reason": self.reason,
        }

    # Lifecycle

    async def run(self) -> int:
        """Run the runtime until a stop is requested (or restarts are exhausted and then a stop is requested);
        returns the last runtime exit code (`os.waitstatus_to_exitcode` convention)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        config = self._config
        while True:
            code = await self._run_once()
            self.last_exit = code
            if self._stop.is_set():
                self._event(f"runtime stopped with {describe_exit(code)}")
                break
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > config.restart_window:
                self._crashes.popleft()
            self._event(f"runtime exited unexpectedly with {describe_exit(code)}")
            if len(self._crashes) >= config.max_restarts:
                self.state = "failed"
                self.reason = (
                    f"runtime exited {len(self._crashes)} times within {config.restart_window:g}s "
                    f"(last: {describe_exit(code)}); not restarting"
                    + (f"; last error output: {self._last_stderr}" if self._last_stderr else "")
                )
                self._event(f"giving up: {self.reason}")
                await self._stop.wait()
                break
            self.state = "restarting"
            delay = min(config.backoff_max, config.backoff_initial * 2 ** (len(self._crashes) - 1))
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                break
            except TimeoutError:
                pass
            self.restarts += 1
        self.state = "stopped"
        loop.remove_signal_handler(signal.SIGCHLD)
        return code

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Forward ``signum`` to the runtime's process group; SIGKILL it after the grace period."""
        if self._stop.is_set():
            return
        self._stop.set()
        self.state = "stopping"
        self._event(f"received {signal.Signals(signum).name}: stopping the runtime (grace {self._config.grace:g}s)")
        if self.pid is not None:
            self._signal_group(signum)
            self._kill_timer = asyncio.get_running_loop().call_later(
                self._config.grace, self._signal_group, signal.SIGKILL
            )

    async def _run_once(self) -> int:
        loop = asyncio.get_running_loop()
        config = self._config
        exited: asyncio.Future[int] = loop.create_future()
        self._exit = exited
        self.state = "starting"
        first, self._first = self._first, None
        try:
            if isinstance(first, OSError):
                raise first
            process = first or spawn_runtime(config)
        except OSError as exc:
            self._last_stderr = f"cannot start {config.runtime_command!r}: {exc}"
            self._event(self._last_stderr)
            return 127
        self._process = process
        self._runtime_started = time.monotonic()
        self._event(f"runtime started (pid {process.pid}): {' '.join(config.runtime_command)}")
        drained: list[asyncio.Future[None]] = []
        for stream, pipe in (("stdout", process.stdout), ("stderr", process.stderr)):
            done: asyncio.Future[None] = loop.create_future()
            protocol = _OutputProtocol(stream, self._output, done)
            await loop.connect_read_pipe(protocol.itself, pipe)
            drained.append(done)
        probe = asyncio.create_task(self._probe_ready(process.pid))
        self._reap()  # it may have exited already
        try:
            code = await exited
        finally:
            probe.cancel()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._signal_group(signal.SIGKILL, process.pid)  # whatever it left behind in its group
        await asyncio.wait(drained, timeout=PIPE_DRAIN_TIMEOUT)
        return code

    async def _probe_ready(self, pid: int) -> None:
        """Connect to the function port until it accepts; never sends a request (user code is not run)."""
        loop = asyncio.get_running_loop()
        config = self._config
        family = socket.AF_INET6 if ":" in config.ready_host else socket.AF_INET
        while True:
            probe = socket.socket(family, socket.SOCK_STREAM)
            probe.setblocking(False)
            try:
                await loop.sock_connect(probe, (config.ready_host, config.port))
                break
            except OSError:
                await asyncio.sleep(config.ready_interval)
            finally:
                probe.close()
        if self._stop.is_set():
            return
        now = time.monotonic()
        self.state = "ready"
        if self.ready_ms is None:
            self.ready_ms = round((now - self._started) * 1000, 1)
            sys.stdout.write(f"MORTY-READY {self.ready_ms:.0f}\n")
            sys.stdout.flush()
        ms = (now - self._runtime_started) * 1000
        self._event(f"runtime (pid {pid}) accepting on port {config.port}, {ms:.0f} ms after its start")

    # Plumbing

    def _reap(self) -> None:
        """Collect every exited child (alpha's runtime, and orphans when alpha is PID 1 or a subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            process = self._process
            if process is not None and pid == process.pid:
                code = os.waitstatus_to_exitcode(status)
                process.returncode = code  # keep Popen consistent: it must never wait for this pid itself
                if self.state != "stopping":
                    self.state = "restarting"  # not ready from this moment; run() decides what comes next
                if self._exit is not None and not self._exit.done():
                    self._exit.set_result(code)

    def _signal_group(self, signum: int, pgid: int | None = None) -> None:
        if pgid is None:
            if self._process is None:
                return
            pgid = self._process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def _output(self, stream: str, text: str) -> None:
        stream, invocation, line = parse_line(text, stream)
        self._logs.append(stream, line, invocation)
        if invocation is None and stream == "stderr" and line.strip():
            self._last_stderr = line.strip()
        if self._config.echo:
            sys.stderr.write(f"[{invocation}] {line}\n" if invocation else f"{line}\n")

    def _event(self, message: str) -> None:
        self._logs.append("alpha", message)
        sys.stderr.write(f"alpha: {message}\n")
