"""A test double of `Orchestrator` for the API's unit tests: it records what Morty asks and answers at once.
(The RIK backend itself is tested against a real RIK in tests/morty/orchestrators and tests/morty/e2e.)"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from morty.orchestrators.base import DeploymentSpec, InstanceEndpoint, OrchestratorError, StartPath


@dataclass
class FakeOrchestrator:
    specs: dict[str, DeploymentSpec] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)
    running: dict[str, list[InstanceEndpoint]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_snapshot: OrchestratorError | None = None
    snapshot_gate: asyncio.Event | None = None
    """When set, `prepare_snapshot` waits for it (a deployment in progress)."""
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def register(self, spec: DeploymentSpec) -> None:
        self.calls.append(("register", spec.key))
        self.specs[spec.key] = spec
        self.running.setdefault(spec.key, [])

    async def unregister(self, key: str) -> None:
        self.calls.append(("unregister", key))
        self.specs.pop(key, None)
        self.snapshots.pop(key, None)
        self.running.pop(key, None)

    async def prepare_snapshot(self, key: str, *, within: float) -> str:
        self.calls.append(("prepare_snapshot", key))
        if self.snapshot_gate is not None:
            await self.snapshot_gate.wait()
        if self.fail_snapshot is not None:
            raise self.fail_snapshot
        self.snapshots[key] = f"{key}-warm"
        return self.snapshots[key]

    async def start_instance(self, key: str, *, within: float) -> InstanceEndpoint:
        self.calls.append(("start_instance", key))
        if key not in self.specs:
            raise OrchestratorError("Rik404", f"no workload {key}")
        n = next(self._ids)
        path = StartPath.RESTORED if key in self.snapshots else StartPath.BOOTED
        endpoint = InstanceEndpoint(f"{key}-i{n}", "10.0.0.1", 30000 + n, path)
        self.running[key].append(endpoint)
        return endpoint

    async def stop_instance(self, key: str, instance_id: str) -> None:
        self.calls.append(("stop_instance", instance_id))
        self.running[key] = [e for e in self.running.get(key, []) if e.instance_id != instance_id]

    async def instances(self, key: str) -> list[InstanceEndpoint]:
        return list(self.running.get(key, []))

    async def pause(self, key: str, instance_id: str) -> None:
        self.calls.append(("pause", instance_id))

    async def resume(self, key: str, instance_id: str, *, within: float) -> InstanceEndpoint:
        self.calls.append(("resume", instance_id))
        return next(e for e in self.running[key] if e.instance_id == instance_id)
