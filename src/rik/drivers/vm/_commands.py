"""Run short-lived helper commands (apt, mkfs, qemu-img, ip, iptables) as asyncio subprocesses."""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_line(self) -> str:
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"

    def describe(self) -> str:
        return f"{shlex.join(self.argv)}: {self.last_line()}"


async def run(*argv: str, stdin: str | None = None, cwd: Path | None = None, limit_seconds: float = 300.0) -> Result:
    """Run `argv` with stdout and stderr captured together; a missing program is exit status 127.

    On timeout or cancellation the process is killed and reaped.
    """
    logger.debug("running %s", shlex.join(argv))
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except FileNotFoundError:
        return Result(tuple(argv), 127, f"{argv[0]}: command not found")
    try:
        async with asyncio.timeout(limit_seconds):
            out, _ = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(tuple(argv), proc.returncode, out.decode(errors="replace"))
