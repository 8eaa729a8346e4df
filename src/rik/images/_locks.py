"""Locks that hold both within this process (asyncio) and across processes (flock on a file)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path


class PathLocks:
    """Named exclusive locks, one lock file per name under `directory`.

    The asyncio lock keeps coroutines of this process from queueing threads on `flock`; the `flock`
    keeps two processes sharing a store (two riklets, a CLI) from writing the same files at once.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._locks: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self._directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._directory / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # flock may block on another process: wait in a thread, not in the event loop.
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock
