"""`Builder`: the API's `BuildQueue` backed by real builds, run in the background of the API's event loop.

Each enqueued build becomes an asyncio task that waits for one of `concurrency` slots, then moves the build to
`running`, downloads and builds the code into a function image, and finishes the build (`succeeded` with the
image and its digest, or `failed` with a message). Its log is streamed into the build record as it is produced
(flushed every `flush_interval` seconds). A failed build touches nothing but its own version, so whatever
version was serving keeps serving. `cancel(build_id)` stops a build (queued or running): it fails as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from morty.api import store
from morty.api.database import Database
from morty.api.errors import MortyError
from morty.api.keys import SecretBox
from morty.api.tables import BuildRow, FunctionRow, VersionRow
from morty.builder._tools import BuildError
from morty.builder.base import DEFAULT_CACHE, RECIPES, BaseImage, ensure_base_image, push_base_image
from morty.builder.function import FunctionBuild, FunctionImage
from morty.builder.sandbox import SandboxLimits
from morty.storage.archives import ArchiveLimits
from morty.storage.base import CodeStore, CodeStoreError

log = logging.getLogger(__name__)
CANCELLED = "cancelled"


@dataclass(frozen=True)
class BuildTarget:
    build_id: str
    version_id: str
    function: str
    version: str
    runtime: str
    code_key: str


@dataclass
class BuilderSettings:
    registry: str
    cache_dir: Path = DEFAULT_CACHE
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))
    concurrency: int = 2
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    tls_verify: bool = False
    flush_interval: float = 0.5


class _BuildLog:
    """Buffers a build's log and appends it to the build record every `interval` seconds (and at the end),
    with secret values masked."""

    def __init__(self, db: Database, build_id: str, interval: float, secrets: list[str]) -> None:
        self._db, self._build_id, self._interval = db, build_id, interval
        self._secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
        self._buffer: list[str] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "****")
        return text

    async def __call__(self, text: str) -> None:
        text = self.mask(text)
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self._buffer.append("".join(f"[{stamp}] {line}\n" for line in text.rstrip("\n").split("\n")))
        if self._task is None:
            self._task = asyncio.create_task(self._periodic())

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer:
                return
            text, self._buffer = "".join(self._buffer), []
            async with self._db.transaction() as session:
                await store.append_build_log(session, self._build_id, text)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


OnBuilt = Callable[[str], Awaitable[None]]
"""Called with the version id once a build succeeded and its version is `deploying`."""


class Builder:
    """Implements `morty.api.builds.BuildQueue`. With `on_built`, a successful build leaves its version
    `deploying` and hands it over; without, the version is `ready` as soon as its image is pushed."""

    def __init__(
        self,
        db: Database,
        code_store: CodeStore,
        settings: BuilderSettings,
        box: SecretBox | None = None,
        on_built: OnBuilt | None = None,
    ) -> None:
        self._db, self._code_store, self._settings, self._box = db, code_store, settings, box
        self.on_built = on_built
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._bases: dict[str, BaseImage] = {}
        self._base_lock = asyncio.Lock()
        self._closing = False

    async def enqueue(self, build_id: str) -> None:
        if build_id in self._tasks:
            return
        task = asyncio.create_task(self._run(build_id), name=f"build-{build_id}")
        self._tasks[build_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(build_id, None))

    @property
    def settings(self) -> BuilderSettings:
        return self._settings

    def active(self) -> list[str]:
        return list(self._tasks)

    async def cancel(self, build_id: str) -> bool:
        """Stop a queued or running build of this builder; it ends `failed` ("cancelled"). False if unknown."""
        task = self._tasks.get(build_id)
        if task is None:
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    async def wait(self, build_id: str) -> None:
        task = self._tasks.get(build_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def close(self) -> None:
        """Stop every build (at shutdown). Running ones are left `running` with a line in their log, so the
        API's next start queues them again (`store.requeue_interrupted_builds`); queued ones stay queued."""
        self._closing = True
        for build_id in list(self._tasks):
            await self.cancel(build_id)

    async def _target(self, build_id: str) -> BuildTarget:
        async with self._db.read() as session:
            result = (
                await session.execute(
                    select(
                        VersionRow.id, VersionRow.version, VersionRow.code_key, FunctionRow.name, FunctionRow.runtime
                    )
                    .join(BuildRow, BuildRow.version_id == VersionRow.id)
                    .join(FunctionRow, FunctionRow.id == BuildRow.function_id)
                    .where(BuildRow.id == build_id)
                )
            ).first()
        if result is None:
            raise BuildError(f"build {build_id} no longer exists")
        version_id, version, code_key, name, runtime = result
        return BuildTarget(build_id, version_id, name, version, runtime, code_key)

    async def _secrets(self, function: str) -> list[str]:
        if self._box is None:
            return []
        async with self._db.read() as session:
            return list((await store.secret_values(session, self._box, function)).values())

    async def _base(self, runtime: str, build_log: _BuildLog) -> BaseImage:
        async with self._base_lock:
            if runtime not in self._bases:
                base = await ensure_base_image(runtime, self._settings.cache_dir, build_log)
                reference = await push_base_image(
                    base, self._settings.registry, build_log, tls_verify=self._settings.tls_verify
                )
                await build_log(f"base image: {reference}\n")
                self._bases[runtime] = base
            return self._bases[runtime]

    async def _run(self, build_id: str) -> None:
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            if not self._closing:  # cancelled while queued: it still ends, as a failed build
                await asyncio.shield(self._cancel_queued(build_id))
            raise
        try:
            await self._run_started(build_id)
        finally:
            self._slots.release()

    async def _cancel_queued(self, build_id: str) -> None:
        try:
            async with self._db.transaction() as session:
                await store.start_build(session, build_id)
                await store.append_build_log(session, build_id, "build cancelled before it started\n")
                await store.finish_build(session, build_id, succeeded=False, message=CANCELLED)
        except MortyError as exc:
            log.warning("could not record a cancelled build: %s", exc, extra={"build": build_id})

    async def _run_started(self, build_id: str) -> None:
        try:
            target = await self._target(build_id)
            async with self._db.transaction() as session:
                await store.start_build(session, build_id)
        except (MortyError, BuildError) as exc:
            log.warning("build not started: %s", exc, extra={"build": build_id})
            return
        build_log = _BuildLog(self._db, build_id, self._settings.flush_interval, await self._secrets(target.function))
        image: FunctionImage | None = None
        message = ""
        interrupted = False
        try:
            await build_log(f"build {build_id}: {target.function} {target.version} ({target.runtime})\n")
            image = await self._build(target, build_log)
            message = f"built {image.reference}@{image.digest}"
        except asyncio.CancelledError:
            message, interrupted = CANCELLED, self._closing
            await build_log("build stopped: Morty APIs are shutting down\n" if interrupted else "build cancelled\n")
            raise
        except BuildError as exc:
            message = exc.message
            await build_log(f"build failed: {exc.message}\n")
        except Exception as exc:  # a bug or an unexpected environment: the build must still end
            log.exception("build crashed", extra={"build": build_id})
            message = f"internal error: {type(exc).__name__}: {exc}"
            await build_log(f"build failed: {message}\n")
        finally:
            await asyncio.shield(self._finish(target, build_log, image, message, interrupted=interrupted))

    async def _finish(
        self, target: BuildTarget, build_log: _BuildLog, image: FunctionImage | None, message: str, *, interrupted: bool
    ) -> None:
        build_id = target.build_id
        try:
            await build_log.close()
            if interrupted:
                return  # left `running`: the API's next start queues it again
            async with self._db.transaction() as session:
                await store.finish_build(
                    session,
                    build_id,
                    succeeded=image is not None,
                    message=build_log.mask(message)[:4000],
                    image=image.reference if image else None,
                    digest=image.digest if image else None,
                    deploy=self.on_built is not None,
                )
        except MortyError as exc:  # e.g. the function was deleted meanwhile
            log.warning("could not record the end of a build: %s", exc, extra={"build": build_id})
            return
        log.info("build finished", extra={"build": build_id, "succeeded": image is not None})
        if image is not None and self.on_built is not None:
            await self.on_built(target.version_id)

    async def _build(self, target: BuildTarget, build_log: _BuildLog) -> FunctionImage:
        if target.runtime not in RECIPES:
            raise BuildError(f"runtime {target.runtime!r} has no base image recipe yet")
        base = await self._base(target.runtime, build_log)
        self._settings.work_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"morty-build-{target.build_id[:12]}-", dir=self._settings.work_dir))
        try:
            archive = workdir / "code.archive"
            try:
                await self._code_store.download(target.code_key, archive)
            except (CodeStoreError, OSError) as exc:
                raise BuildError(f"could not fetch the code: {exc}") from None
            build = FunctionBuild(
                base=base,
                registry=self._settings.registry,
                workdir=workdir,
                log=build_log,
                archive_limits=self._settings.archive_limits,
                sandbox_limits=self._settings.sandbox_limits,
                tls_verify=self._settings.tls_verify,
            )
            return await build.build(target.function, target.version, archive)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)
