"""`Deployer`: a built version becomes runnable through the orchestrator, in the background.

A successful build leaves its version `deploying` and hands it here. The deployer registers the version
with the orchestrator (no instance), and for VM isolation has it boot one instance, snapshot it once ready
and remove it, so that every later instance restores instead of booting. Then the version is `ready`; an
orchestrator error makes it `failed` with the reason, and whatever version served before keeps serving.

A version left `deploying` by a stopped process is deployed again at the next start (`resume`): every step
is idempotent, so a half-done deployment is simply done again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select

from morty.api import store
from morty.api.database import Database
from morty.api.errors import MortyError
from morty.api.keys import SecretBox
from morty.api.models import Isolation, VersionStatus
from morty.api.tables import FunctionRow, VersionRow
from morty.orchestrators.base import DeploymentSpec, Orchestrator, OrchestratorError, OrchestratorUnavailable
from morty.orchestrators.base import Isolation as OrchestratorIsolation

log = logging.getLogger(__name__)
RUNTIME_PORT = 8080
"""Where alpha's runtime serves invocations inside every function image."""
ALPHA_PORT = 8081
"""alpha's control API (readiness, captured logs) inside every function image."""


@dataclass(frozen=True)
class DeploySettings:
    timeout: float = 600.0
    """Longest a deployment may take (a first VM boot under TCG takes tens of seconds)."""
    snapshots: bool = True
    """VM versions get a warm snapshot at deploy time, and instances restore it."""
    unavailable_retries: int = 5
    retry_delay: float = 2.0
    concurrency: int = 1
    """Deployments at once: each VM deployment boots a VM, and boots competing for CPU all time out together."""
    vm_unavailable: str = ""
    """Why VMs cannot run here (empty: they can): a function made `vm` before then fails to deploy, saying so."""


def deployment_key(function: str, version_id: str) -> str:
    """A DNS label unique per version, stable across retries."""
    return f"{function[:40]}-{version_id[:12]}"


def image_reference(image: str, digest: str | None) -> str:
    """`repository@digest`: the image the build pushed, so a re-pushed tag never changes a deployed version.
    (The tag is dropped: skopeo refuses references with both a tag and a digest.)"""
    if not digest or "@" in image:
        return image
    repository, _, last = image.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{repository}/{name}@{digest}" if repository else f"{name}@{digest}"


def cpu_millis(vcpus: int) -> int:
    """The CPU share requested per instance: a quarter core per vCPU, so a node packs idle functions densely
    while each instance may still burst to its vCPUs."""
    return 250 * vcpus


class Deployer:
    def __init__(
        self, db: Database, box: SecretBox, orchestrator: Orchestrator, settings: DeploySettings | None = None
    ) -> None:
        self._db, self._box, self._orchestrator = db, box, orchestrator
        self.settings = settings or DeploySettings()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._slots = asyncio.Semaphore(max(1, self.settings.concurrency))
        self._closing = False
        self.before_redeploy: list[Callable[[str], Awaitable[None]]] = []
        """Called with the version id before a redeploy changes the version in the orchestrator (which replaces
        its running instances): the version's instances are stopped, drained first, and come back on demand."""
        self.on_ready: list[Callable[[str], Awaitable[None]]] = []
        """Called with the function's name once one of its versions is ready."""
        self.deploying: set[str] = set()
        """Deployment keys being (re)deployed: the instance such a deployment boots for its snapshot is the
        deployer's, not one for the instance manager to adopt."""

    async def enqueue(self, version_id: str, *, redeploy: bool = False) -> None:
        """Deploy a `deploying` version; with `redeploy`, apply the function's current configuration to a `ready`
        one (it keeps serving meanwhile). A redeploy asked for while the version deploys runs right after."""
        if self._closing:
            return
        if version_id in self._tasks:
            if redeploy:
                self._again.add(version_id)
            return
        task = asyncio.create_task(self._deploy(version_id, redeploy), name=f"deploy-{version_id}")
        self._tasks[version_id] = task
        task.add_done_callback(lambda _: self._finished(version_id))

    def _finished(self, version_id: str) -> None:
        self._tasks.pop(version_id, None)
        if version_id in self._again and not self._closing:
            self._again.discard(version_id)
            task = asyncio.create_task(self._deploy(version_id, True), name=f"redeploy-{version_id}")
            self._tasks[version_id] = task
            task.add_done_callback(lambda _: self._finished(version_id))

    async def redeploy_function(self, function_id: str) -> int:
        """Apply the function's configuration (env, secrets, memory, vCPUs, isolation) to its ready versions."""
        async with self._db.read() as session:
            ready = (
                await session.scalars(
                    select(VersionRow.id).where(
                        VersionRow.function_id == function_id,
                        VersionRow.status.in_([VersionStatus.READY.value, VersionStatus.DEPLOYING.value]),
                        VersionRow.deployment_key.is_not(None),
                    )
                )
            ).all()
        for version_id in ready:
            await self.enqueue(version_id, redeploy=True)
        return len(ready)

    async def resume(self) -> int:
        """Deploy again every version a previous process left `deploying`."""
        async with self._db.read() as session:
            pending = (
                await session.scalars(select(VersionRow.id).where(VersionRow.status == VersionStatus.DEPLOYING.value))
            ).all()
        for version_id in pending:
            await self.enqueue(version_id)
        return len(pending)

    async def wait(self, version_id: str) -> None:
        task = self._tasks.get(version_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def close(self) -> None:
        """Stop at shutdown; interrupted versions stay `deploying` and are resumed at the next start."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _spec(self, version_id: str, redeploy: bool = False) -> DeploymentSpec | None:
        async with self._db.transaction() as session:
            version = await session.get(VersionRow, version_id, with_for_update=True)
            function = await session.get(FunctionRow, version.function_id) if version is not None else None
            wanted = VersionStatus.READY if redeploy else VersionStatus.DEPLOYING
            if version is None or function is None or version.status != wanted.value:
                return None
            if version.image is None:
                raise OrchestratorError("NoImage", "the version has no image to deploy")
            if version.deployment_key is None:
                version.deployment_key = deployment_key(function.name, version.id)
            secrets = await store.secret_values(session, self._box, function.name)
            isolation = OrchestratorIsolation(Isolation(function.isolation).value)
            if isolation == OrchestratorIsolation.VM and self.settings.vm_unavailable:
                raise OrchestratorError(
                    "NoVMs",
                    f"VMs are not available on this platform ({self.settings.vm_unavailable}); "
                    "set the function's isolation to container",
                )
            return DeploymentSpec(
                key=version.deployment_key,
                image=image_reference(version.image, version.digest),
                isolation=isolation,
                port=RUNTIME_PORT,
                control_port=ALPHA_PORT,
                memory_mib=function.memory_mib,
                vcpus=function.vcpus,
                cpu_millis=cpu_millis(function.vcpus),
                env={
                    **{str(k): str(v) for k, v in function.env.items()},
                    **secrets,
                    "MORTY_FUNCTION": function.name,
                    "MORTY_VERSION": version.version,
                },
                labels={"morty.function": function.name, "morty.version": version.version},
            )

    async def _deploy(self, version_id: str, redeploy: bool = False) -> None:
        attempt = 0
        while True:
            try:
                async with self._slots:
                    await asyncio.wait_for(self._deploy_once(version_id, redeploy), self.settings.timeout)
                return
            except OrchestratorUnavailable as exc:
                attempt += 1
                if attempt > self.settings.unavailable_retries:
                    await self._fail(version_id, f"the orchestrator is unavailable: {exc.message}")
                    return
                log.warning("orchestrator unavailable; retrying the deployment", extra={"version": version_id})
                await asyncio.sleep(self.settings.retry_delay * attempt)
            except OrchestratorError as exc:
                await self._fail(version_id, f"{exc.reason}: {exc.message}")
                return
            except TimeoutError:
                await self._fail(version_id, f"not deployed within {self.settings.timeout:.0f}s")
                return
            except MortyError as exc:  # the function or version was deleted meanwhile
                log.info("deployment abandoned: %s", exc, extra={"version": version_id})
                return

    async def _deploy_once(self, version_id: str, redeploy: bool = False) -> None:
        spec = await self._spec(version_id, redeploy)
        if spec is None:
            return
        self.deploying.add(spec.key)
        try:
            await self._deploy_spec(version_id, spec, redeploy)
        finally:
            self.deploying.discard(spec.key)

    async def _deploy_spec(self, version_id: str, spec: DeploymentSpec, redeploy: bool) -> None:
        log.info("deploying", extra={"version": version_id, "key": spec.key, "isolation": spec.isolation.value})
        if redeploy:
            for hook in self.before_redeploy:
                await hook(version_id)
        await self._orchestrator.register(spec)
        snapshot = None
        if spec.isolation == OrchestratorIsolation.VM and self.settings.snapshots:
            snapshot = await self._orchestrator.prepare_snapshot(spec.key, within=self.settings.timeout)
        async with self._db.transaction() as session:
            version = await session.get(VersionRow, version_id, with_for_update=True)
            if version is not None and version.status == VersionStatus.DEPLOYING.value:
                version.status = VersionStatus.READY.value
                version.status_message = f"ready; instances restore snapshot {snapshot}" if snapshot else "ready"
                version.ready_at = store.now()
                deployed = True
            elif redeploy and version is not None and version.status == VersionStatus.READY.value:
                version.status_message = "ready; redeployed with the function's current configuration" + (
                    f"; instances restore snapshot {snapshot}" if snapshot else ""
                )
                deployed = True
            else:
                deployed = False
        if not deployed:  # deleted (or failed) while it deployed: leave nothing behind in the orchestrator
            log.info("version gone while deploying; unregistering", extra={"version": version_id, "key": spec.key})
            await self._orchestrator.unregister(spec.key)
            return
        log.info("deployed", extra={"version": version_id, "key": spec.key, "snapshot": snapshot})
        function = spec.labels["morty.function"]
        for hook in self.on_ready:
            await hook(function)

    async def _fail(self, version_id: str, message: str) -> None:
        """A first deployment fails its version; a failed redeploy leaves it ready (it served before) and says so."""
        log.warning("deployment failed: %s", message, extra={"version": version_id})
        async with self._db.transaction() as session:
            version = await session.get(VersionRow, version_id, with_for_update=True)
            if version is not None and version.status == VersionStatus.DEPLOYING.value:
                version.status = VersionStatus.FAILED.value
                version.status_message = f"deployment failed: {message}"[:4000]
            elif version is not None and version.status == VersionStatus.READY.value:
                version.status_message = f"ready; applying the new configuration failed: {message}"[:4000]
