"""Run the image tools (skopeo, umoci) as asyncio subprocesses."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_error_line(self) -> str:
        """The last non-empty line of stderr (or stdout): what a tool says when it fails."""
        for text in (self.stderr, self.stdout):
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return f"exit status {self.returncode}"


async def run_command(*argv: str) -> CommandResult:
    """Run `argv` with captured output; if the caller is cancelled (e.g. by `asyncio.timeout`) the process
    is killed and reaped.

    A missing executable is reported as a failed result (returncode 127), not an exception, so callers
    handle every failure in one place.
    """
    logger.debug("running %s", argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        return CommandResult(tuple(argv), 127, "", f"{argv[0]}: command not found")
    try:
        out, err = await proc.communicate()
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    assert proc.returncode is not None
    return CommandResult(tuple(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
