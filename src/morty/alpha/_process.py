"""Starting the runtime process, and starting it *early*: before alpha imports asyncio.

Importing asyncio costs about 100 ms of CPU here (most of a Python runtime's own start), so alpha spawns the runtime
first and lets the two imports overlap. Signals that arrive before the event loop takes over are recorded and
replayed, so a SIGTERM during start-up still stops the runtime instead of orphaning it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from types import FrameType

from ._config import Config, ConfigError


def spawn_runtime(config: Config) -> subprocess.Popen[bytes]:
    """Start the runtime in its own process group, its stdout/stderr piped to alpha."""
    # Popen, not asyncio's subprocesses: alpha reaps children itself (waitpid(-1) on SIGCHLD, as PID 1 must),
    # which would race asyncio's child watcher.
    env = dict(os.environ)
    env["MORTY_PORT"] = str(config.port)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen(
        config.runtime_command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        process_group=0,  # its own group: signals reach everything it starts, and only that
    )


class EarlyStart:
    """The configuration, the first runtime process (or why it could not start) and signals received so far."""

    def __init__(self) -> None:
        self.config: Config | None = None
        self.config_error: ConfigError | None = None
        self.process: subprocess.Popen[bytes] | OSError | None = None
        self.signals: list[int] = []

    @classmethod
    def begin(cls) -> EarlyStart:
        early = cls()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, early._record)
        try:
            early.config = Config.from_env()
        except ConfigError as exc:
            early.config_error = exc
            return early
        try:
            early.process = spawn_runtime(early.config)
        except OSError as exc:
            early.process = exc
        return early

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
