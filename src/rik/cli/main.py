"""`rikctl`: apply, get, describe, delete, scale and logs for RIK workloads, instances and nodes.

The controller's URL comes from `--server`, else `$RIK_SERVER`, else `server:` in
`$RIK_CONFIG` (default `~/.config/rik/config.yaml`), else `http://127.0.0.1:7700`.
Exit codes: 0 success, 1 the controller refused (4xx/5xx), 2 bad usage or input, 3 controller unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from rik.client import ApiError, ClientError, RikClient, Unreachable
from rik.model import Instance, Node, Snapshot, SnapshotPhase, Workload

T = TypeVar("T")

app = typer.Typer(name="rikctl", help="Control a RIK cluster.", no_args_is_help=True, pretty_exceptions_enable=False)
# Output quotes user input, server messages and container output (e.g. "[a-z0-9]" patterns, "[/bin/sh]"):
# never read it as rich markup, which mangles it or fails with a traceback.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

DEFAULT_SERVER = "http://127.0.0.1:7700"


class Output(StrEnum):
    TABLE = "table"
    WIDE = "wide"
    JSON = "json"
    YAML = "yaml"


class Noun(StrEnum):
    WORKLOADS = "workloads"
    INSTANCES = "instances"
    NODES = "nodes"


NOUN_ALIASES = {
    "workload": Noun.WORKLOADS,
    "workloads": Noun.WORKLOADS,
    "wl": Noun.WORKLOADS,
    "instance": Noun.INSTANCES,
    "instances": Noun.INSTANCES,
    "inst": Noun.INSTANCES,
    "node": Noun.NODES,
    "nodes": Noun.NODES,
    "no": Noun.NODES,
}


class UsageError(Exception):
    pass


_global_server: str | None = None


@app.callback()
def _global_options(
    server: Annotated[
        str | None, typer.Option("--server", "-s", help="controller URL (also $RIK_SERVER)", show_default=False)
    ] = None,
) -> None:
    global _global_server
    _global_server = server


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message spans several lines with an excerpt of the source: keep it to one line."""
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = []
        for text, mark in ((exc.problem, exc.problem_mark), (exc.context, exc.context_mark)):
            if text:
                parts.append(f"{text} at line {mark.line + 1} column {mark.column + 1}" if mark else text)
        if parts:
            return "; ".join(parts)
    return " ".join(str(exc).split())


def server_url(explicit: str | None) -> str:
    if explicit or _global_server:
        return explicit or _global_server or DEFAULT_SERVER
    if os.environ.get("RIK_SERVER"):
        return os.environ["RIK_SERVER"]
    config = Path(os.environ.get("RIK_CONFIG", Path.home() / ".config" / "rik" / "config.yaml"))
    if config.is_file():
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{config}: not valid YAML: {yaml_problem(exc)}") from exc
        if isinstance(data, dict) and isinstance(data.get("server"), str):
            return str(data["server"])
    return DEFAULT_SERVER


ServerOption = Annotated[str | None, typer.Option("--server", "-s", help="controller URL", show_default=False)]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table, wide, json or yaml")]


def run(server: str | None, action: Callable[[RikClient], Coroutine[Any, Any, T]]) -> T:
    """Run one client action and turn every failure into one readable line and an exit code."""

    async def main() -> T:
        async with RikClient(server_url(server)) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except UsageError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(2) from exc
    except Unreachable as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(3) from exc
    except ApiError as exc:
        err.print(f"error: {exc.message}")
        raise typer.Exit(1) from exc
    except ClientError as exc:
        err.print(f"error: {exc}")
        raise typer.Exit(1) from exc


def noun(value: str) -> Noun:
    try:
        return NOUN_ALIASES[value.lower()]
    except KeyError:
        err.print(f"error: unknown resource {value!r}; use workloads, instances or nodes")
        raise typer.Exit(2) from None


def load_manifests(path: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.endswith(".json") or text.lstrip().startswith(("{", "[")):
            loaded = json.loads(text)
            documents = loaded if isinstance(loaded, list) else [loaded]
        else:
            documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: malformed YAML: {yaml_problem(exc)}") from exc
    if not documents:
        raise UsageError(f"{path}: no manifest in it")
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise UsageError(f"{path}: document {index + 1} is a {type(document).__name__}, not a mapping")
    return documents


def emit(data: BaseModel | Sequence[BaseModel], fmt: Output) -> None:
    plain: Any = (
        data.model_dump(mode="json", by_alias=True)
        if isinstance(data, BaseModel)
        else [item.model_dump(mode="json", by_alias=True) for item in data]
    )
    if fmt == Output.JSON:
        out.print(json.dumps(plain, indent=2), markup=False)
    else:
        out.print(yaml.safe_dump(plain, sort_keys=False).rstrip(), markup=False)


def _endpoint(instance: Instance) -> str:
    if not instance.address:
        return "-"
    parts = []
    for binding in instance.ports:
        local = f"{instance.address}:{binding.port}"
        parts.append(f"{local} ({instance.host_address}:{binding.host_port})" if binding.host_port else local)
    return ", ".join(parts) or instance.address


def workload_table(items: list[Workload], wide: bool) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ["NAME", "KIND", "REPLICAS", "RUNNING", "PENDING", "FAILED", "IMAGE"] + (["LABELS"] if wide else []):
        table.add_column(column)
    for w in items:
        row = [
            w.metadata.name,
            w.kind.value,
            str(w.status.replicas),
            str(w.status.running),
            str(w.status.pending),
            str(w.status.failed),
            w.spec.image,
        ]
        if wide:
            row.append(",".join(f"{k}={v}" for k, v in w.metadata.labels.items()) or "-")
        table.add_row(*row)
    return table


def instance_table(items: list[Instance], wide: bool) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ["ID", "WORKLOAD", "NODE", "PHASE", "ADDRESS", "REASON"] + (["MESSAGE"] if wide else []):
        table.add_column(column)
    for i in items:
        phase = i.phase.value if i.desired_state.value == "Running" else f"{i.phase.value} (deleting)"
        row = [i.id, i.workload, i.node or "-", phase, _endpoint(i), i.reason or "-"]
        if wide:
            row.append(i.message or "-")
        table.add_row(*row)
    return table


def node_table(items: list[Node], wide: bool) -> Table:
    table = Table(box=None, pad_edge=False)
    columns = ["NAME", "STATUS", "ADDRESS", "CPU (alloc/cap)", "MEMORY MiB (alloc/cap)", "RUNTIMES"]
    for column in columns + (["SUBNET", "LABELS"] if wide else []):
        table.add_column(column)
    for n in items:
        row = [
            n.name,
            n.status.value,
            n.address,
            f"{n.allocated.cpu}m/{n.capacity.cpu}m",
            f"{n.allocated.memory}/{n.capacity.memory}",
            ",".join(n.runtimes) or "-",
        ]
        if wide:
            row += [n.subnet, ",".join(f"{k}={v}" for k, v in n.labels.items()) or "-"]
        table.add_row(*row)
    return table


@app.command()
def apply(
    filename: Annotated[str, typer.Option("--filename", "-f", help="YAML or JSON manifest; - for stdin")],
    server: ServerOption = None,
) -> None:
    """Create or update the workloads in a manifest file."""

    async def action(client: RikClient) -> None:
        for manifest in load_manifests(filename):
            workload, created = await client.apply_workload(manifest)
            out.print(f"workload/{workload.metadata.name} {'created' if created else 'configured'}")

    run(server, action)


@app.command()
def get(
    resource: Annotated[str, typer.Argument(help="workloads, instances or nodes")],
    name: Annotated[str | None, typer.Argument(help="one object's name")] = None,
    output: OutputOption = Output.TABLE,
    workload: Annotated[str | None, typer.Option(help="instances of this workload")] = None,
    node: Annotated[str | None, typer.Option(help="instances on this node")] = None,
    selector: Annotated[str | None, typer.Option("--selector", "-l", help="label selector k=v,...")] = None,
    server: ServerOption = None,
) -> None:
    """List objects, or show one."""
    kind = noun(resource)

    async def action(client: RikClient) -> None:
        wide = output == Output.WIDE
        structured = output in (Output.JSON, Output.YAML)
        if kind == Noun.WORKLOADS:
            workloads = [await client.get_workload(name)] if name else (await client.list_workloads(selector)).items
            if not structured:
                out.print(workload_table(workloads, wide))
            items: Sequence[BaseModel] = workloads
        elif kind == Noun.INSTANCES:
            instances = (
                [await client.get_instance(name)]
                if name
                else (await client.list_instances(workload=workload, node=node)).items
            )
            if not structured:
                out.print(instance_table(instances, wide))
            items = instances
        else:
            nodes = [await client.get_node(name)] if name else (await client.list_nodes()).items
            if not structured:
                out.print(node_table(nodes, wide))
            items = nodes
        if structured:
            emit(items[0] if name else items, output)

    run(server, action)


@app.command()
def describe(
    resource: Annotated[str, typer.Argument(help="workload, instance or node")],
    name: Annotated[str, typer.Argument()],
    server: ServerOption = None,
) -> None:
    """Show one object in full, with its instances for a workload or node."""
    kind = noun(resource)

    async def action(client: RikClient) -> None:
        if kind == Noun.WORKLOADS:
            emit(await client.get_workload(name), Output.YAML)
            instances = (await client.list_instances(workload=name)).items
        elif kind == Noun.INSTANCES:
            emit(await client.get_instance(name), Output.YAML)
            return
        else:
            emit(await client.get_node(name), Output.YAML)
            instances = (await client.list_instances(node=name)).items
        out.print("\ninstances:")
        out.print(instance_table(instances, wide=True) if instances else "  (none)")

    run(server, action)


@app.command()
def delete(
    resource: Annotated[str | None, typer.Argument(help="workload, instance or node")] = None,
    name: Annotated[str | None, typer.Argument()] = None,
    filename: Annotated[str | None, typer.Option("--filename", "-f", help="delete what this manifest names")] = None,
    wait: Annotated[bool, typer.Option(help="wait until every instance is gone")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait with --wait")] = 60.0,
    server: ServerOption = None,
) -> None:
    """Delete a workload (and its instances), an instance, or a node."""
    if filename is None and (resource is None or name is None):
        err.print("error: give RESOURCE NAME, or -f FILE")
        raise typer.Exit(2)

    async def action(client: RikClient) -> None:
        targets: list[tuple[Noun, str]]
        if filename is not None:
            targets = [(Noun.WORKLOADS, str(m.get("metadata", {}).get("name", ""))) for m in load_manifests(filename)]
        else:
            assert resource is not None and name is not None
            targets = [(noun(resource), name)]
        for kind, target in targets:
            if kind == Noun.WORKLOADS:
                await client.delete_workload(target)
                out.print(f"workload/{target} deleted")
                if wait:
                    await _wait_gone(partial(client.list_instances, workload=target), timeout)
            elif kind == Noun.INSTANCES:
                await client.delete_instance(target)
                out.print(f"instance/{target} deleted")
                if wait:
                    await _wait_gone(partial(_instances_with_id, client, target), timeout)
            else:
                await client.delete_node(target)
                out.print(f"node/{target} deleted")

    run(server, action)


async def _instances_with_id(client: RikClient, instance_id: str) -> list[Instance]:
    try:
        return [await client.get_instance(instance_id)]
    except ApiError as exc:
        if exc.status == 404:
            return []
        raise


async def _wait_gone(listing: Callable[[], Awaitable[Any]], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = await listing()
        remaining = result if isinstance(result, list) else result.items
        if not remaining:
            return
        if loop.time() > deadline:
            raise ClientError(f"{len(remaining)} instance(s) still present after {seconds:.0f}s")
        await asyncio.sleep(0.2)


@app.command()
def scale(
    workload: Annotated[str, typer.Argument()],
    replicas: Annotated[int, typer.Option("--replicas", "-r", min=0, max=1000)],
    server: ServerOption = None,
) -> None:
    """Set a workload's number of replicas."""

    async def action(client: RikClient) -> None:
        scaled = await client.scale_workload(workload, replicas)
        out.print(f"workload/{scaled.metadata.name} scaled to {scaled.spec.replicas}")

    run(server, action)


@app.command()
def logs(
    instance: Annotated[str, typer.Argument(help="instance id")],
    tail: Annotated[int | None, typer.Option(help="only the last N bytes")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    server: ServerOption = None,
) -> None:
    """Print an instance's output (stdout and stderr, or a VM's console)."""

    async def action(client: RikClient) -> None:
        async for chunk in client.logs(instance, tail_bytes=tail, follow=follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    run(server, action)


@app.command()
def schema(server: ServerOption = None) -> None:
    """Print the JSON Schema that workload manifests are validated against."""
    import httpx

    try:
        response = httpx.get(f"{server_url(server)}/api/v1/schemas/workload", timeout=10)
    except httpx.TransportError as exc:
        err.print(f"error: controller did not answer: {exc}")
        raise typer.Exit(3) from exc
    out.print(json.dumps(response.json(), indent=2), markup=False)


@app.command()
def pause(instance: Annotated[str, typer.Argument(help="instance id (VM)")], server: ServerOption = None) -> None:
    """Pause a VM instance: its CPUs stop, its memory stays."""

    async def action(client: RikClient) -> None:
        await client.pause_instance(instance)
        out.print(f"instance/{instance} pausing")

    run(server, action)


@app.command()
def resume(instance: Annotated[str, typer.Argument(help="instance id (VM)")], server: ServerOption = None) -> None:
    """Resume a paused VM instance."""

    async def action(client: RikClient) -> None:
        await client.resume_instance(instance)
        out.print(f"instance/{instance} resuming")

    run(server, action)


snapshot_app = typer.Typer(help="Snapshots of VM instances: create, list, delete.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")


def snapshot_table(items: list[Snapshot]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ["NAME", "WORKLOAD", "INSTANCE", "NODE", "PHASE", "SIZE MiB", "MESSAGE"]:
        table.add_column(column)
    for s in items:
        size = f"{s.size_bytes / 2**20:.1f}" if s.size_bytes is not None else "-"
        phase = f"{s.phase.value} (deleting)" if s.deleting else s.phase.value
        table.add_row(s.name, s.workload, s.instance, s.node, phase, size, s.message or "-")
    return table


@snapshot_app.command("create")
def snapshot_create(
    instance: Annotated[str, typer.Argument(help="instance id (VM, Running or Paused)")],
    name: Annotated[str, typer.Argument(help="snapshot name")],
    wait: Annotated[bool, typer.Option(help="wait until it is Ready")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 120.0,
    server: ServerOption = None,
) -> None:
    """Snapshot a VM instance (memory and disk); it keeps running."""

    async def action(client: RikClient) -> None:
        snapshot = await client.snapshot_instance(instance, name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while wait and snapshot.phase == SnapshotPhase.PENDING:
            if loop.time() > deadline:
                raise ClientError(f"snapshot {name} still Pending after {timeout:.0f}s")
            await asyncio.sleep(0.2)
            snapshot = await client.get_snapshot(name)
        if snapshot.phase == SnapshotPhase.FAILED:
            raise ClientError(f"snapshot {name} failed: {snapshot.reason}: {snapshot.message}")
        out.print(f"snapshot/{name} {snapshot.phase.value.lower()} on node {snapshot.node}")

    run(server, action)


@snapshot_app.command("list")
def snapshot_list(
    workload: Annotated[str | None, typer.Option(help="only this workload's")] = None,
    output: OutputOption = Output.TABLE,
    server: ServerOption = None,
) -> None:
    """List snapshots."""

    async def action(client: RikClient) -> None:
        items = (await client.list_snapshots(workload=workload)).items
        if output in (Output.JSON, Output.YAML):
            emit(items, output)
        else:
            out.print(snapshot_table(items))

    run(server, action)


@snapshot_app.command("delete")
def snapshot_delete(name: Annotated[str, typer.Argument()], server: ServerOption = None) -> None:
    """Delete a snapshot; its node removes the files."""

    async def action(client: RikClient) -> None:
        await client.delete_snapshot(name)
        out.print(f"snapshot/{name} deleted")

    run(server, action)
