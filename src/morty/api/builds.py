"""The seam between Morty APIs and the builder.

When an upload is recorded, the API creates a build record (status `queued`) in the same
transaction and then calls `BuildQueue.enqueue(build_id)`. A builder takes it from there: it moves
the build to `running`, appends to its log, and finishes it (`store.start_build`,
`store.append_build_log`, `store.finish_build`), which also moves the version to `ready` or `failed`.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class BuildQueue(Protocol):
    async def enqueue(self, build_id: str) -> None:
        """Hand a queued build to the builder. Must return quickly; the build runs elsewhere."""

    async def cancel(self, build_id: str) -> bool:
        """Stop a build this queue holds (it ends `failed`, "cancelled"); False if it holds no such build."""


class NoBuilderQueue:
    """The in-process queue used while no builder is attached: it builds nothing, and every build
    stays `queued` (and is handed over again at the next start). It never reports a success."""

    def __init__(self) -> None:
        self.enqueued: list[str] = []

    async def cancel(self, build_id: str) -> bool:
        return False

    async def enqueue(self, build_id: str) -> None:
        self.enqueued.append(build_id)
        log.info("build queued; no builder is attached, so it stays queued", extra={"build": build_id})
