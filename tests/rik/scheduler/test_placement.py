"""The placement function on its own: feasibility, spreading, balance, and the reasons it gives."""

from __future__ import annotations

from collections import Counter

from rik.scheduler import NodeView, PendingInstance, plan


def pending(
    count: int, workload: str = "web", *, cpu: int = 100, memory: int = 64, runtime: str = "container"
) -> list[PendingInstance]:
    return [PendingInstance(f"{workload}-{i}", workload, runtime, cpu, memory) for i in range(count)]


def test_replicas_spread_evenly_over_equal_nodes() -> None:
    nodes = [NodeView(f"n{i}", 4000, 4096) for i in range(3)]
    result = plan(nodes, pending(9))
    assert Counter(result.assignments.values()) == {"n0": 3, "n1": 3, "n2": 3}


def test_spreading_counts_replicas_already_placed() -> None:
    nodes = [NodeView("n0", 4000, 4096), NodeView("n1", 4000, 4096)]
    result = plan(nodes, pending(2), Counter({("web", "n0"): 3}))
    assert set(result.assignments.values()) == {"n1"}


def test_never_overcommits_cpu_or_memory() -> None:
    nodes = [NodeView("small", 1000, 1000, cpu_allocated=500, memory_allocated=200)]
    result = plan(nodes, pending(10, cpu=100, memory=300))
    assert len(result.assignments) == 2  # memory: 800 free / 300
    assert len(result.unschedulable) == 8
    reason = next(iter(result.unschedulable.values()))
    assert reason.startswith("0/1 nodes can run it: 1 insufficient memory")


def test_prefers_the_less_loaded_node_between_equals_in_spread() -> None:
    nodes = [NodeView("busy", 4000, 4096, cpu_allocated=3000), NodeView("idle", 4000, 4096)]
    result = plan(nodes, pending(1, workload="other"))
    assert result.assignments == {"other-0": "idle"}


def test_runtime_and_node_restrictions_are_explained() -> None:
    nodes = [NodeView("c1", 4000, 4096), NodeView("v1", 4000, 4096, runtimes=frozenset({"vm"}))]
    vm = PendingInstance("vm-0", "vm", "vm", 100, 64)
    pinned = PendingInstance("r-0", "r", "vm", 100, 64, only_on=frozenset({"elsewhere"}), only_on_reason="held by x")
    result = plan(nodes, [vm, pinned])
    assert result.assignments == {"vm-0": "v1"}
    assert result.unschedulable["r-0"] == "0/2 nodes can run it: 2 held by x"


def test_no_ready_node() -> None:
    assert plan([], pending(1)).unschedulable == {"web-0": "no Ready node"}


def test_same_input_same_plan() -> None:
    nodes = [NodeView(f"n{i}", 2000, 2048) for i in range(5)]
    work = pending(30) + pending(7, "api", cpu=250)
    assert plan(nodes, work) == plan(list(reversed(nodes)), work)
