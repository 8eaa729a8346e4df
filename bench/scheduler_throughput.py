"""Scheduler throughput: place 1,000 instances on 100 simulated nodes through a real controller.

The simulated nodes are benchmark-only agents: they register, heartbeat and, for every instance
assigned to them, report it Running at once, without running anything. So the figure is the control
plane's own cost: API writes, the change feed, the leader's placement passes and status reports.

The reference, in the same run, is the placement algorithm alone on the same input (no database,
no HTTP); the ratio says what persistence and the API cost on top of the decisions.

    uv run python bench/scheduler_throughput.py [--nodes 100] [--instances 1000] [--database URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench._harness import controller, report
from rik.client import RikClient
from rik.model import InstanceStatusReport, NodeCapacity, NodeRegistration, Phase
from rik.scheduler import NodeView, PendingInstance, plan

NODE_CPU = 4000
NODE_MEMORY = 8192


async def simulated_nodes(
    client: RikClient, names: list[str], since: int, running: set[str], done: asyncio.Event, total: int
) -> None:
    """Report every instance assigned to one of `names` as Running."""
    mine = set(names)
    reports: set[asyncio.Task[object]] = set()
    limit = asyncio.Semaphore(16)

    async def run(instance_id: str, node: str) -> None:
        async with limit:
            await client.report_status(
                instance_id, InstanceStatusReport(node=node, phase=Phase.RUNNING, address="10.0.0.1")
            )
        running.add(instance_id)
        if len(running) >= total:
            done.set()

    async for event in client.watch(since=since, resources="instances"):
        obj = event.object
        if obj.get("node") in mine and obj.get("phase") == "Pending" and obj["id"] not in running:
            task = asyncio.create_task(run(obj["id"], obj["node"]))
            reports.add(task)
            task.add_done_callback(reports.discard)


async def heartbeats(client: RikClient, names: list[str]) -> None:
    while True:
        await asyncio.gather(*(client.heartbeat(name) for name in names))
        await asyncio.sleep(2)


def reference_placement(nodes: int, instances: int, workloads: int) -> float:
    views = [NodeView(f"sim-{i:03d}", NODE_CPU, NODE_MEMORY) for i in range(nodes)]
    pending = [
        PendingInstance(f"w{i % workloads}-{i}", f"w{i % workloads}", "container", 100, 64) for i in range(instances)
    ]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        result = plan(views, pending)
        times.append(time.perf_counter() - started)
        assert len(result.assignments) == instances
    return statistics.median(times)


async def measure(url: str, nodes: int, instances: int, workloads: int) -> dict[str, float]:
    async with RikClient(url, timeout=60) as client:
        names = [f"sim-{i:03d}" for i in range(nodes)]
        for name in names:
            await client.register_node(
                NodeRegistration(
                    name=name,
                    address="192.0.2.1",
                    riklet_url="http://192.0.2.1:1",
                    capacity=NodeCapacity(cpu=NODE_CPU, memory=NODE_MEMORY),
                    runtimes=["container"],
                )
            )
        since = (await client.list_instances()).resource_version
        running: set[str] = set()
        done = asyncio.Event()
        agents = asyncio.create_task(simulated_nodes(client, names, since, running, done, instances))
        beats = asyncio.create_task(heartbeats(client, names))
        started = time.perf_counter()
        per_workload = instances // workloads
        for index in range(workloads):
            await client.create_workload(
                {
                    "kind": "Pod",
                    "metadata": {"name": f"w{index}"},
                    "spec": {
                        "image": "bench/none:1",
                        "replicas": per_workload,
                        "resources": {"cpu": 100, "memory": 64},
                    },
                }
            )
        created = time.perf_counter() - started
        await asyncio.wait_for(done.wait(), timeout=600)
        all_running = time.perf_counter() - started
        listing = await client.list_instances()
        placed = sum(1 for i in listing.items if i.node)
        agents.cancel()
        beats.cancel()
        per_node = [sum(1 for i in listing.items if i.node == n) for n in names]
        return {
            "created_s": created,
            "all_running_s": all_running,
            "placed": placed,
            "max_per_node": max(per_node),
            "min_per_node": min(per_node),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=10)
    parser.add_argument("--database", default=None, help="SQLAlchemy URL; default a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, controller(Path(workdir), database=args.database) as url:
        figures = asyncio.run(measure(url, args.nodes, args.instances, args.workloads))
    algorithm = reference_placement(args.nodes, args.instances, args.workloads)
    throughput = args.instances / figures["all_running_s"]
    report(
        f"scheduler throughput: {args.instances} instances on {args.nodes} simulated nodes",
        [
            ("workloads created (API)", f"{figures['created_s']:.2f} s"),
            ("all instances Running", f"{figures['all_running_s']:.2f} s"),
            ("throughput", f"{throughput:.0f} instances/s"),
            (
                "placed",
                f"{figures['placed']:.0f} (per node {figures['min_per_node']:.0f}..{figures['max_per_node']:.0f})",
            ),
            ("reference: placement algorithm alone", f"{algorithm * 1000:.1f} ms"),
            ("ratio (control plane / algorithm)", f"{figures['all_running_s'] / algorithm:.0f}x"),
        ],
        {
            **figures,
            "throughput_per_s": throughput,
            "algorithm_s": algorithm,
            "nodes": args.nodes,
            "instances": args.instances,
        },
    )


if __name__ == "__main__":
    main()
