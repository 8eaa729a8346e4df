"""Resource-aware placement with spreading.

The scheduler sees a snapshot (nodes with what is already allocated on them, instances waiting for a
node) and returns a `Plan`; it does no I/O, keeps no state and reads no clock, so any decision can be
replayed in a test. A node is feasible when it runs the instance's runtime and has the CPU and memory
left; among feasible nodes it picks the one with the fewest instances of the same workload (spreading
replicas), then the one left least loaded, then by name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeView:
    name: str
    cpu: int
    memory: int
    cpu_allocated: int = 0
    memory_allocated: int = 0
    runtimes: frozenset[str] = frozenset({"container"})


@dataclass(frozen=True)
class PendingInstance:
    id: str
    workload: str
    runtime: str
    cpu: int
    memory: int
    only_on: frozenset[str] | None = None
    """When set, the only nodes it may go to (e.g. those holding the snapshot it restores)."""
    only_on_reason: str = ""


@dataclass(frozen=True)
class Plan:
    assignments: dict[str, str] = field(default_factory=dict)
    """instance id → node name"""
    unschedulable: dict[str, str] = field(default_factory=dict)
    """instance id → why no node fits, readable"""


@dataclass
class _Room:
    view: NodeView
    cpu_free: int
    memory_free: int

    def load_after(self, cpu: int, memory: int) -> float:
        return max(
            (self.view.cpu - self.cpu_free + cpu) / self.view.cpu,
            (self.view.memory - self.memory_free + memory) / self.view.memory,
        )


def plan(
    nodes: list[NodeView],
    pending: list[PendingInstance],
    placed_per_workload: Counter[tuple[str, str]] | None = None,
) -> Plan:
    """Place `pending` (in order) on `nodes`. `placed_per_workload[(workload, node)]` counts the
    instances of a workload already on a node."""
    spread = Counter(placed_per_workload or {})
    rooms = [
        _Room(n, n.cpu - n.cpu_allocated, n.memory - n.memory_allocated) for n in sorted(nodes, key=lambda n: n.name)
    ]
    result = Plan()
    for instance in pending:
        feasible = [
            r
            for r in rooms
            if (instance.only_on is None or r.view.name in instance.only_on)
            and instance.runtime in r.view.runtimes
            and r.cpu_free >= instance.cpu
            and r.memory_free >= instance.memory
        ]
        if not feasible:
            result.unschedulable[instance.id] = _why_not(rooms, instance)
            continue
        best = min(
            feasible,
            key=lambda r: (
                spread[(instance.workload, r.view.name)],
                r.load_after(instance.cpu, instance.memory),
                r.view.name,
            ),
        )
        best.cpu_free -= instance.cpu
        best.memory_free -= instance.memory
        spread[(instance.workload, best.view.name)] += 1
        result.assignments[instance.id] = best.view.name
    return result


def _why_not(rooms: list[_Room], instance: PendingInstance) -> str:
    if not rooms:
        return "no Ready node"
    reasons: Counter[str] = Counter()
    for room in rooms:
        if instance.only_on is not None and room.view.name not in instance.only_on:
            reasons[instance.only_on_reason or "not eligible"] += 1
        elif instance.runtime not in room.view.runtimes:
            reasons[f"no {instance.runtime} runtime"] += 1
        elif room.memory_free < instance.memory:
            reasons["insufficient memory"] += 1
        else:
            reasons["insufficient cpu"] += 1
    able = [
        r
        for r in rooms
        if instance.runtime in r.view.runtimes and (instance.only_on is None or r.view.name in instance.only_on)
    ]
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    message = f"0/{len(rooms)} nodes can run it: {detail}"
    if able:
        message += (
            f" (requests {instance.cpu}m CPU and {instance.memory} MiB; most free on one node:"
            f" {max(r.cpu_free for r in able)}m CPU, {max(r.memory_free for r in able)} MiB)"
        )
    return message
