"""alpha's main: read the configuration, start the runtime, serve the control API, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from ._config import Config
from ._control import ControlServer
from ._logs import LogStore
from ._process import EarlyStart
from ._supervisor import Supervisor, shell_exit_code

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to alpha (as they do when alpha is PID 1), so alpha reaps them too."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return os.getpid() == 1
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (ImportError, OSError, AttributeError):
        return False


async def run(config: Config, started: float, early: EarlyStart | None = None) -> int:
    logs = LogStore(config.log_lines, config.log_file)
    supervisor = Supervisor(config, logs, started, early.process if early else None)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, supervisor.stop, signum)
    runtime = asyncio.create_task(supervisor.run())
    await asyncio.sleep(0)  # adopt (or spawn) the runtime first: it boots while the control port opens
    for early_signal in early.signals if early else ():
        supervisor.stop(early_signal)  # received before the loop took over
    server: asyncio.Server | None = None
    try:
        server = await ControlServer(supervisor, logs).start(config.control_host, config.control_port)
    except OSError as exc:
        sys.stderr.write(f"alpha: cannot serve the control API on {config.control_host}:{config.control_port}: {exc}\n")
        supervisor.stop(signal.SIGTERM)
    code = await runtime
    if server is not None:
        server.close()
    logs.close()
    return shell_exit_code(code) if server is not None else 1


def main(started: float | None = None, early: EarlyStart | None = None) -> int:
    """Run alpha; returns the process exit status (the runtime's, 128+N if a signal N ended it).

    ``early`` is the runtime already started by ``__main__`` before this module (and asyncio) was imported.
    """
    started = time.monotonic() if started is None else started
    early = EarlyStart.begin() if early is None else early
    if early.config is None:
        sys.stderr.write(f"alpha: {early.config_error}\n")
        return 2
    become_subreaper()
    return asyncio.run(run(early.config, started, early))
