"""`morty`: create, deploy, invoke and manage functions.

Requests go to the current context's URL (the API gateway; see `morty config`), with its token.
Exit codes: 0 success, 1 the platform refused or a build failed, 2 bad usage or input, 3 unreachable.
Every listing takes `-o json` for scripts; errors are one line on stderr (`--debug` for a traceback).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import semver
import typer
from rich.console import Console
from rich.table import Table

from morty.cli import config as cli_config
from morty.cli import platform
from morty.cli.client import Api, CliError
from morty.cli.package import function_config, read_config, zip_directory

app = typer.Typer(name="morty", help="Deploy and run functions on Morty.", no_args_is_help=True)
config_app = typer.Typer(help="Contexts: which platform (URL and token) the CLI talks to.", no_args_is_help=True)
alias_app = typer.Typer(help="Aliases: names pointing at versions.", no_args_is_help=True)
secrets_app = typer.Typer(help="Secrets: encrypted values the function sees as environment variables.")
app.add_typer(config_app, name="config")
app.add_typer(alias_app, name="alias")
app.add_typer(secrets_app, name="secrets")
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
STATE: dict[str, Any] = {"context": None, "debug": False}
RUNTIMES_DIR = Path(__file__).resolve().parents[1] / "runtimes"
FOLLOW_OVERLAP = timedelta(seconds=10)
FUNCTION_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""A DNS label, as Morty APIs require."""
STARTING = {"riklet": "riklet (probing runtimes; the first run provisions the VM guest kernel)"}
TEMPLATES = {"python3.11": RUNTIMES_DIR / "python" / "template", "node18": RUNTIMES_DIR / "node" / "template"}


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


@app.callback()
def _options(
    context: Annotated[
        str | None, typer.Option("--context", help="use this context instead of the current one")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="tracebacks instead of one-line errors")] = False,
) -> None:
    STATE["context"], STATE["debug"] = context, debug


def _api(timeout: float = 300) -> Api:
    try:
        return Api(cli_config.current(STATE["context"]), timeout=timeout)
    except cli_config.ConfigError as exc:
        raise CliError(str(exc), 2) from None


def _emit(data: Any, output: Output, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> None:
    if output == Output.JSON:
        out.print(json.dumps(data, indent=2, default=str))
        return
    table = Table(box=None, pad_edge=False)
    for title, _ in columns:
        table.add_column(title)
    for row in rows:
        table.add_row(*(_cell(row.get(key)) for _, key in columns))
    out.print(table)


def _done(output: Output, data: dict[str, Any], text: str) -> None:
    """What a command did: `text` for people, `data` as one JSON object with -o json."""
    out.print(json.dumps(data, default=str) if output == Output.JSON else text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


# Functions -------------------------------------------------------------------------------------------------------


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="the function's name (a DNS label)")],
    runtime: Annotated[str, typer.Option("--runtime", "-r", help="python3.11 or node18")] = "python3.11",
    directory: Annotated[Path | None, typer.Option("--dir", help="where to create it (default ./NAME)")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Create a function from its runtime's template. JSON: name, runtime, directory."""
    if not FUNCTION_NAME.match(name):
        raise CliError(f"{name!r} is not a function name: lowercase letters, digits and '-', 1-63, no '-' at an end", 2)
    template = TEMPLATES.get(runtime)
    if template is None:
        raise CliError(f"unknown runtime {runtime!r}; known: {', '.join(sorted(TEMPLATES))}", 2)
    target = directory or Path(name)
    if target.exists() and any(target.iterdir()):
        raise CliError(f"{target} exists and is not empty", 2)
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(template.iterdir()):
        if source.is_file():
            (target / source.name).write_text(source.read_text().replace("{{name}}", name))
    _done(
        output,
        {"name": name, "runtime": runtime, "directory": str(target.resolve())},
        f"created {name} ({runtime}) in {target}: edit its handler, then `morty deploy {target}`",
    )


def _next_version(api: Api, name: str) -> str:
    versions = api.get(f"/v1/functions/{name}/versions")["items"]
    if not versions:
        return "0.1.0"
    highest = max(semver.Version.parse(v["version"]) for v in versions)
    return str(highest.bump_patch())


@app.command()
def deploy(
    path: Annotated[Path, typer.Argument(help="the function's directory (with morty.yaml)")] = Path("."),
    version: Annotated[str | None, typer.Option("--version", help="default: the highest + 1 patch")] = None,
    wait: Annotated[bool, typer.Option(help="wait until the version serves")] = True,
    output: OutputOption = Output.TABLE,
) -> None:
    """Package, upload and build a new version, then print the function's URL."""
    if not path.is_dir():
        raise CliError(f"{path} is not a directory", 2)
    settings = read_config(path)
    name, runtime = settings.get("name"), settings.get("runtime")
    if not name or not runtime:
        raise CliError(f"{path}/morty.yaml needs `name` and `runtime`", 2)
    api = _api()
    config = function_config(settings)
    try:
        existing = api.get(f"/v1/functions/{name}")
        if existing["runtime"] != runtime:
            raise CliError(
                f"the name {name!r} is taken by a {existing['runtime']} function, and {path}/morty.yaml says "
                f"{runtime}: rename it there, or `morty delete {name}` first",
                1,
            )
        if config:
            api.patch(f"/v1/functions/{name}", config)
    except CliError as exc:
        if not exc.message.startswith("404"):
            raise
        api.post("/v1/functions", {"name": name, "runtime": runtime, **config})
        err.print(f"created function {name}")
    version = version or str(settings.get("version") or "") or _next_version(api, name)
    archive = zip_directory(path)
    created = api.post(f"/v1/functions/{name}/versions", {"version": version})
    upload = created["upload"]
    if len(archive) > upload["max_bytes"]:
        raise CliError(f"the archive is {len(archive)} bytes; the limit is {upload['max_bytes']}", 2)
    try:
        response = httpx.put(upload["url"], content=archive, headers=upload["headers"], timeout=300, trust_env=False)
    except httpx.TransportError as exc:
        raise CliError(f"upload failed: {exc}", 3) from None
    if response.status_code >= 400:
        raise CliError(f"upload refused: {response.status_code} {response.text[:300]}", 1)
    build = response.json().get("build") or api.get(f"/v1/functions/{name}/builds")["items"][0]
    err.print(f"uploaded {name} {version} ({len(archive)} bytes); building")
    final = _follow_build(api, name, build["id"])
    if final["status"] != "succeeded":
        err.print(final["log"][-4000:])
        raise CliError(f"build of {name} {version} failed: {final['message']}", 1)
    state = api.get(f"/v1/functions/{name}/versions/{version}")
    if wait:
        with err.status(f"deploying {name} {version}") as status:
            while state["status"] == "deploying":
                time.sleep(0.5)
                state = api.get(f"/v1/functions/{name}/versions/{version}")
                status.update(f"deploying {name} {version}: {state['status_message']}")
        if state["status"] != "ready":
            raise CliError(f"{name} {version} did not deploy: {state['status_message']}", 1)
    url = f"{api.context.url}/fn/{name}"
    if output == Output.JSON:
        out.print(json.dumps({"function": name, "version": version, "status": state["status"], "url": url}))
    else:
        out.print(f"{name} {version} is {state['status']}: {url}")


def _follow_build(api: Api, name: str, build_id: str) -> dict[str, Any]:
    shown = 0
    with err.status("build queued") as status:
        while True:
            build: dict[str, Any] = api.get(f"/v1/functions/{name}/builds/{build_id}")
            lines = build["log"].splitlines()
            for line in lines[shown:]:
                err.print(f"  {line}")
            shown = len(lines)
            status.update(f"build {build['status']}")
            if build["status"] not in ("queued", "running"):
                return build
            time.sleep(0.5)


@app.command("list")
def list_functions(output: OutputOption = Output.TABLE) -> None:
    """Functions, with their latest ready version."""
    data = _api().get("/v1/functions")
    rows = [{**f, "latest": f.get("latest_version")} for f in data["items"]]
    _emit(data, output, [("NAME", "name"), ("RUNTIME", "runtime"), ("LATEST", "latest")], rows)


@app.command()
def describe(name: str, output: OutputOption = Output.TABLE) -> None:
    """A function's configuration, versions, aliases and instances."""
    api = _api()
    data = {
        "function": api.get(f"/v1/functions/{name}"),
        "versions": api.get(f"/v1/functions/{name}/versions")["items"],
        "aliases": api.get(f"/v1/functions/{name}/aliases")["items"],
        "instances": api.get(f"/v1/functions/{name}/instances")["items"],
    }
    if output == Output.JSON:
        out.print(json.dumps(data, indent=2, default=str))
        return
    function = data["function"]
    for key, value in function.items():
        if key != "config":
            out.print(f"{key + ':':<16}{_cell(value)}")
    for key, value in (function.get("config") or {}).items():
        out.print(f"{key + ':':<16}{_cell(value)}")
    listed_versions = ", ".join(f"{v['version']} ({v['status']})" for v in data["versions"]) or "-"
    listed_aliases = ", ".join(f"{a['name']} -> {a['version']}" for a in data["aliases"]) or "-"
    out.print(f"{'versions:':<16}{listed_versions}")
    out.print(f"{'aliases:':<16}{listed_aliases}")
    out.print(f"{'instances:':<16}{len(data['instances'])}")


@app.command()
def versions(name: str, output: OutputOption = Output.TABLE) -> None:
    """A function's versions, highest first."""
    data = _api().get(f"/v1/functions/{name}/versions")
    columns = [("VERSION", "version"), ("STATUS", "status"), ("CREATED", "created_at"), ("MESSAGE", "status_message")]
    _emit(data, output, columns, data["items"])


@app.command()
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    output: OutputOption = Output.TABLE,
) -> None:
    """Delete a function with its versions, instances, images and code. JSON: name and what was deleted (counts)."""
    if not yes and not typer.confirm(f"delete {name} and everything it has?"):
        raise CliError("not deleted", 1)
    deleted = _api().delete(f"/v1/functions/{name}")
    _done(output, deleted, f"deleted {name} ({deleted.get('versions', 0)} versions)")


@app.command()
def scale(
    name: str,
    min_instances: Annotated[int | None, typer.Option("--min", help="instances kept running")] = None,
    max_instances: Annotated[int | None, typer.Option("--max", help="most instances at once")] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Set a function's instance limits."""
    patch = {k: v for k, v in (("min_instances", min_instances), ("max_instances", max_instances)) if v is not None}
    if not patch:
        raise CliError("give --min and/or --max", 2)
    function = _api().patch(f"/v1/functions/{name}", patch)
    config = function.get("config", function)
    _done(output, function, f"{name}: min {config['min_instances']}, max {config['max_instances']}")


@app.command()
def runtimes(output: OutputOption = Output.TABLE) -> None:
    """The runtimes functions can use."""
    data = _api().get("/v1/runtimes")
    columns = [("NAME", "name"), ("LANGUAGE", "language"), ("VERSION", "language_version"), ("HANDLER", "handler")]
    _emit(data, output, columns, data["items"])


# Invoking and logs -----------------------------------------------------------------------------------------------


@app.command()
def invoke(
    name: str,
    method: Annotated[str, typer.Option("-X", "--request", help="HTTP method")] = "GET",
    data: Annotated[str | None, typer.Option("-d", "--data", help="the body, or @FILE")] = None,
    header: Annotated[list[str] | None, typer.Option("-H", "--header", help="'Name: value', repeatable")] = None,
    query: Annotated[list[str] | None, typer.Option("-q", "--query", help="k=v, repeatable")] = None,
    version: Annotated[str | None, typer.Option("--version", help="a version or alias")] = None,
    path: Annotated[str, typer.Option("--path", help="path after the function's URL")] = "/",
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="status, invocation id, cold or warm, and timing phases")
    ] = False,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table: the body as is; json: status, headers, body, ...")
    ] = Output.TABLE,
) -> None:
    """Call a function through the gateway and print its response."""
    headers: dict[str, str] = {}
    for item in header or []:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise CliError(f"header {item!r} is not 'Name: value'", 2)
        headers[key.strip()] = value.strip()
    params: list[tuple[str, str | int | float | bool | None]] = []
    for item in query or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"query {item!r} is not k=v", 2)
        params.append((key, value))
    body: bytes | None = None
    if data is not None:
        if data.startswith("@"):
            try:
                body = Path(data[1:]).read_bytes()
            except OSError as exc:
                raise CliError(f"cannot read {data[1:]}: {exc.strerror}", 2) from None
        else:
            body = data.encode()
    if not any(key.lower() == "x-request-id" for key in headers):
        headers["X-Request-Id"] = uuid.uuid4().hex  # the gateway records the invocation under this id
    api = _api()
    # A plain client: the management token is never sent to a function.
    plain = httpx.Client(base_url=api.context.url, timeout=api.http.timeout, trust_env=False)
    target = f"/fn/{name}" + (f"@{version}" if version else "") + ("" if path == "/" else "/" + path.lstrip("/"))
    started = time.perf_counter()
    try:
        response = plain.request(method.upper(), target, params=params, content=body, headers=headers)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {api.context.url}: {exc}", 3) from None
    finally:
        plain.close()
    elapsed = (time.perf_counter() - started) * 1000
    invocation = response.headers.get("x-morty-invocation-id") or response.headers.get("x-request-id") or "-"
    if verbose:
        err.print(f"{response.status_code} {response.reason_phrase} in {elapsed:.1f} ms (invocation {invocation})")
        err.print(_phases(api, name, invocation))
    if output == Output.JSON:
        answer = {"status": response.status_code, "headers": dict(response.headers), "body": response.text}
        out.print(json.dumps({**answer, "invocation": invocation, "elapsed_ms": round(elapsed, 1)}))
    else:
        sys.stdout.write(response.text)
        if response.text and not response.text.endswith("\n"):
            sys.stdout.write("\n")
    if response.status_code >= 400:
        raise typer.Exit(1)


def _phases(api: Api, name: str, invocation: str, within: float = 5.0) -> str:
    """The gateway's record of the invocation (it ships records every second): cold or warm, and where the time
    went."""
    deadline = time.monotonic() + within
    while True:
        try:
            items = api.get(f"/v1/functions/{name}/invocations", params={"limit": 50})["items"]
        except CliError as exc:
            return f"no invocation record: {exc.message}"
        record = next((item for item in items if item["id"] == invocation), None)
        if record is not None:
            start = "warm" if record["path"] == "warm" else f"cold start ({record['path']})"
            return (
                f"{start}: queued {record['queue_ms']:.1f} ms, instance {record['provision_ms']:.1f} ms, "
                f"function {record['upstream_ms']:.1f} ms, {record['duration_ms']:.1f} ms in the gateway"
            )
        if time.monotonic() > deadline:
            return f"no invocation record yet; later: `morty logs {name} -i {invocation}`"
        time.sleep(0.3)


@app.command()
def logs(
    name: str,
    invocation: Annotated[str | None, typer.Option("--invocation", "-i", help="only this invocation's lines")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")] = False,
    limit: Annotated[int, typer.Option(help="the last N lines")] = 200,
    output: OutputOption = Output.TABLE,
) -> None:
    """What a function's instances printed (with --follow, until Ctrl-C)."""
    api = _api()
    params: dict[str, Any] = {"limit": limit}
    if invocation:
        params["invocation"] = invocation
    shown: dict[tuple[str, str, str], datetime] = {}
    try:
        while True:
            for item in api.get(f"/v1/functions/{name}/logs", params=params)["items"]:
                key = (item["ts"], item["instance"], item["line"])
                if key in shown:
                    continue
                shown[key] = datetime.fromisoformat(item["ts"])
                if output == Output.JSON:
                    out.print(json.dumps(item))
                else:
                    out.print(f"{item['ts']} {item.get('invocation') or '-'} {item['line']}")
            if not follow:
                return
            sys.stdout.flush()
            if shown:
                # Asks again for a little before the newest line shown: lines collected late from another
                # instance may carry an earlier timestamp; those already shown are skipped.
                since = max(shown.values()) - FOLLOW_OVERLAP
                shown = {key: ts for key, ts in shown.items() if ts >= since}
                params |= {"since": since.isoformat(), "limit": 10_000}
            time.sleep(1)
    except KeyboardInterrupt:
        return


# Aliases and secrets ---------------------------------------------------------------------------------------------


@alias_app.command("set")
def alias_set(name: str, alias: str, version: str, output: OutputOption = Output.TABLE) -> None:
    """Point ALIAS of function NAME at VERSION (created if new). JSON: the alias (name, version, ...)."""
    api = _api()
    try:
        set_alias = api.patch(f"/v1/functions/{name}/aliases/{alias}", {"version": version})
    except CliError as exc:
        if not exc.message.startswith("404"):
            raise
        set_alias = api.post(f"/v1/functions/{name}/aliases", {"name": alias, "version": version})
    _done(output, set_alias, f"{name}@{alias} -> {version}")


@alias_app.command("list")
def alias_list(name: str, output: OutputOption = Output.TABLE) -> None:
    data = _api().get(f"/v1/functions/{name}/aliases")
    _emit(data, output, [("ALIAS", "name"), ("VERSION", "version"), ("UPDATED", "updated_at")], data["items"])


@alias_app.command("delete")
def alias_delete(name: str, alias: str, output: OutputOption = Output.TABLE) -> None:
    _api().delete(f"/v1/functions/{name}/aliases/{alias}")
    _done(output, {"function": name, "alias": alias, "deleted": True}, f"deleted {name}@{alias}")


@secrets_app.command("set")
def secret_set(
    name: str,
    key: str,
    value: Annotated[
        str | None, typer.Argument(help="default: read from stdin (keeps it out of shell history)")
    ] = None,
    output: OutputOption = Output.TABLE,
) -> None:
    """Store secret KEY of function NAME (encrypted at rest; never shown again)."""
    secret = value if value is not None else sys.stdin.read().rstrip("\n")
    _api().put(f"/v1/functions/{name}/secrets/{key}", {"value": secret})
    _done(output, {"function": name, "secret": key, "stored": True}, f"secret {key} of {name} stored")


@secrets_app.command("list")
def secret_list(name: str, output: OutputOption = Output.TABLE) -> None:
    data = _api().get(f"/v1/functions/{name}/secrets")
    _emit(data, output, [("NAME", "name"), ("UPDATED", "updated_at")], data["items"])


@secrets_app.command("delete")
def secret_delete(name: str, key: str, output: OutputOption = Output.TABLE) -> None:
    _api().delete(f"/v1/functions/{name}/secrets/{key}")
    _done(output, {"function": name, "secret": key, "deleted": True}, f"secret {key} of {name} deleted")


# Contexts --------------------------------------------------------------------------------------------------------


@config_app.command("set-context")
def set_context(
    name: str,
    url: Annotated[str, typer.Option("--url", help="the gateway's URL")],
    token: Annotated[str | None, typer.Option("--token", help="the management token")] = None,
    use: Annotated[bool, typer.Option("--use/--no-use", help="make it the current context")] = True,
    output: OutputOption = Output.TABLE,
) -> None:
    """Create or update a context. JSON: name, url, token_set, current, path."""
    if not url.startswith(("http://", "https://")):
        raise CliError(f"--url must start with http:// or https://, not {url!r}", 2)
    data = cli_config.load()
    data["contexts"][name] = {"url": url.rstrip("/"), "token": token}
    if use:
        data["current-context"] = name
    path = cli_config.save(data)
    saved = {"name": name, "url": url.rstrip("/"), "token_set": token is not None, "current": use, "path": str(path)}
    _done(output, saved, f"context {name} saved in {path}" + (" and in use" if use else ""))


@config_app.command("use-context")
def use_context(name: str, output: OutputOption = Output.TABLE) -> None:
    data = cli_config.load()
    if name not in data["contexts"]:
        raise CliError(f"no context {name!r}; see `morty config get-contexts`", 2)
    data["current-context"] = name
    cli_config.save(data)
    _done(output, {"current-context": name}, f"using context {name}")


@config_app.command("current-context")
def current_context(output: OutputOption = Output.TABLE) -> None:
    context = cli_config.current(STATE["context"])
    if output == Output.JSON:
        out.print(json.dumps({"name": context.name, "url": context.url, "token_set": context.token is not None}))
    else:
        out.print(f"{context.name} {context.url}")


@config_app.command("get-contexts")
def get_contexts(output: OutputOption = Output.TABLE) -> None:
    data = cli_config.load()
    rows = [
        {"current": "*" if name == data.get("current-context") else "", "name": name, "url": entry.get("url")}
        for name, entry in sorted(data["contexts"].items())
    ]
    _emit({"items": rows}, output, [("CURRENT", "current"), ("NAME", "name"), ("URL", "url")], rows)


# The platform on this machine ---------------------------------------------------------------------------------


DataDirOption = Annotated[Path, typer.Option("--data-dir", envvar="MORTY_DATA", help="everything the platform keeps")]


def _supervisor_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "run" / "supervisor.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _status(data_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((data_dir / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def _show_status(status: dict[str, Any], output: Output) -> None:
    rows = [{"service": name, **entry} for name, entry in status["services"].items()]
    columns = [("SERVICE", "service"), ("PID", "pid"), ("RUNNING", "running"), ("HEALTHY", "healthy"),
               ("RESTARTS", "restarts"), ("LOG", "log")]  # fmt: skip
    _emit(status, output, columns, rows)
    if output == Output.TABLE and status.get("vms"):
        out.print(_vms_line(status["vms"]))


def _vms_line(vms: dict[str, Any]) -> str:
    if vms["available"]:
        return "VMs: available; functions run as VMs unless their morty.yaml says `isolation: container`."
    return (
        f"VMs: NOT AVAILABLE ({vms['reason']}). Functions run as containers (isolation `container`); "
        "a function asking for `isolation: vm` is refused."
    )


@app.command()
def up(
    data_dir: DataDirOption = platform.DEFAULT_DATA_DIR,
    ports_from: Annotated[
        int | None,
        typer.Option(envvar="MORTY_PORTS_FROM", help="use ports N, N+1, ... instead of the defaults"),
    ] = None,
    bridge: Annotated[str, typer.Option(envvar="MORTY_BRIDGE", help="the riklet's bridge")] = platform.BRIDGE,
    no_vm: Annotated[
        bool, typer.Option("--no-vm", envvar="MORTY_NO_VM", help="run functions as containers, never as VMs")
    ] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every service")] = 600,
    output: OutputOption = Output.TABLE,
) -> None:
    """Start the whole platform on this machine (registry, RIK, Morty APIs, gateway), supervised.

    Functions run as VMs where this host can run them; otherwise (or with --no-vm) as containers, and
    `morty up` and `morty status` say so."""
    data_dir = data_dir.resolve()
    already_running = _supervisor_pid(data_dir) is not None
    if not already_running:
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "morty.cli.platform", "--data-dir", str(data_dir), "--bridge", bridge]
        if ports_from is not None:
            argv += ["--ports-from", str(ports_from)]
        if no_vm:
            argv.append("--no-vm")
        with (data_dir / "logs" / "supervisor.log").open("ab") as log:
            supervisor = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        with err.status("starting the platform") as progress:
            while True:
                status = _status(data_dir)
                if status is not None and all(s["healthy"] for s in status["services"].values()):
                    break
                if supervisor.poll() is not None:
                    tail = (data_dir / "logs" / "supervisor.log").read_text(errors="replace")[-2000:]
                    raise CliError(f"the platform did not start; supervisor log:\n{tail}", 1)
                if time.monotonic() > deadline:
                    raise CliError(f"the platform did not start within {timeout:.0f}s (logs in {data_dir}/logs)", 1)
                if status is not None:
                    waiting = [name for name, s in status["services"].items() if not s["healthy"]]
                    progress.update(f"starting: {', '.join(STARTING.get(name, name) for name in waiting)}")
                time.sleep(0.2)
    status = _status(data_dir)
    if status is None:
        raise CliError(f"the platform in {data_dir} is starting or stopping; try `morty status` shortly", 1)
    url = f"http://127.0.0.1:{status['ports']['gateway']}"
    data = cli_config.load()
    data["contexts"]["local"] = {"url": url, "token": (data_dir / "morty" / "token").read_text().strip()}
    data["current-context"] = "local"
    cli_config.save(data)
    if output == Output.JSON:
        out.print(json.dumps({**status, "url": url}, default=str))
        return
    _show_status(status, output)
    if already_running and no_vm and status["vms"]["available"]:
        out.print("The platform was already running with VMs: `morty down`, then `morty up --no-vm`.")
    out.print(f"\nThe platform is up: {url} (context `local`). Next: morty init hello && morty deploy hello")


@app.command()
def status(data_dir: DataDirOption = platform.DEFAULT_DATA_DIR, output: OutputOption = Output.TABLE) -> None:
    """Each service's health and restarts."""
    current = _status(data_dir.resolve()) if _supervisor_pid(data_dir.resolve()) else None
    if current is None:
        raise CliError(f"the platform is not running (data in {data_dir})", 1)
    _show_status(current, output)
    if not all(s["healthy"] for s in current["services"].values()):
        raise typer.Exit(1)


@app.command()
def down(
    data_dir: DataDirOption = platform.DEFAULT_DATA_DIR,
    timeout: Annotated[float, typer.Option(help="seconds to wait for everything to stop")] = 180,
    output: OutputOption = Output.TABLE,
) -> None:
    """Stop the platform and remove every instance it ran (state stays in the data directory).
    JSON: was_running."""
    pid = _supervisor_pid(data_dir.resolve())
    if pid is None:
        _done(output, {"was_running": False}, "the platform is not running")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with err.status("stopping the platform"):
        while _supervisor_pid(data_dir.resolve()) == pid:
            if time.monotonic() > deadline:
                raise CliError(f"the supervisor (pid {pid}) is still stopping after {timeout:.0f}s", 1)
            time.sleep(0.2)
    _done(output, {"was_running": True}, "the platform is down")


def main() -> None:
    try:
        app(standalone_mode=False)
    except CliError as exc:
        if STATE["debug"]:
            raise
        err.print(f"error: {exc.message}")
        sys.exit(exc.code)
    except cli_config.ConfigError as exc:
        err.print(f"error: {exc}")
        sys.exit(2)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors (Typer's own click): usage, then the problem; exit 2
        show = getattr(exc, "show", None)
        if show is None:
            err.print(f"error: {exc}")
        else:
            show()
        sys.exit(getattr(exc, "exit_code", 2))
    except Exception as exc:  # anything unexpected: one line, unless --debug
        if STATE["debug"]:
            raise
        err.print(f"error: {type(exc).__name__}: {exc}")
        sys.exit(1)
