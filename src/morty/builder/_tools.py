"""Running the external tools of a build (mmdebstrap, umoci, skopeo, runc) with their output streamed to a log."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence

LogSink = Callable[[str], Awaitable[None]]
"""Receives build log text (whole lines, each ending in a newline)."""


class BuildError(Exception):
    """A build step failed; the message says which and why, for the build record."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def discard(_text: str) -> None:
    """A `LogSink` that drops everything."""


async def run(
    argv: Sequence[str],
    log: LogSink,
    *,
    what: str,
    timeout: float | None = None,  # noqa: ASYNC109  # the process is killed, not just abandoned
    env: Mapping[str, str] | None = None,
    on_timeout: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """Run `argv`, streaming its stdout+stderr line by line to `log`; return the output. Raises `BuildError`
    naming `what` (with the last lines of output) on a non-zero exit or after `timeout` seconds, when the process
    is killed (after `on_timeout`, e.g. to kill a container the process only supervises)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: {argv[0]} is not installed") from exc
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace")
            if not text.endswith("\n"):
                text += "\n"
            lines.append(text)
            await log(text)
        await proc.wait()

    try:
        await asyncio.wait_for(pump(), timeout)
    except TimeoutError:
        if on_timeout is not None:
            await on_timeout()
        await _kill(proc)
        raise BuildError(f"{what}: timed out after {timeout:g} s") from None
    except BaseException:
        await _kill(proc)
        raise
    if proc.returncode != 0:
        tail = "".join(lines[-15:]).strip()
        raise BuildError(f"{what} failed (exit {proc.returncode})" + (f":\n{tail}" if tail else ""))
    return "".join(lines)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the whole session: e.g. mmdebstrap's apt and dpkg too
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
