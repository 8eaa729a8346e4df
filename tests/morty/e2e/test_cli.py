"""The `morty` CLI as a user runs it (a subprocess), against the whole platform (gateway, Morty APIs, RIK): every
command's output and exit code, `-o json` parsing with its documented fields, and one-line errors with exit
codes that mean something (1 refused, 2 bad input, 3 unreachable)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.morty.e2e.conftest import TOKEN, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]
MORTY = [sys.executable, "-m", "morty.cli"]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def morty(env: dict[str, str], *args: str, stdin: str | None = None) -> Run:
    """Run the CLI in a thread: Morty APIs are served by this test's event loop, which must keep running."""
    done = await asyncio.to_thread(
        subprocess.run, [*MORTY, *args], env=env, capture_output=True, text=True, timeout=600, input=stdin, check=False
    )
    return Run(done.returncode, done.stdout, done.stderr)


def ok(run: Run) -> Run:
    assert run.code == 0, f"exit {run.code}\n{run.stdout}\n{run.stderr}"
    return run


def fails(run: Run, code: int, message: str) -> None:
    """The command failed with `code` and said why in one line naming `message`."""
    assert (run.code, run.stdout) == (code, ""), f"exit {run.code}\n{run.stdout}\n{run.stderr}"
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr, run.stderr


async def follow_logs(env: dict[str, str]) -> None:
    """`morty logs --follow` prints what is logged while it follows, and Ctrl-C ends it quietly with exit 0."""
    follower = await asyncio.create_subprocess_exec(
        *MORTY, "logs", "hello", "--follow", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert follower.stdout is not None and follower.stderr is not None
    output, errors = follower.stdout, follower.stderr

    async def shows(text: bytes) -> None:
        while text not in (line := await output.readline()):
            assert line, f"logs --follow ended: {(await errors.read()).decode()}"

    try:
        async with asyncio.timeout(60):
            await shows(b"greeting Ada")  # logged before: the first lines
            ok(await morty(env, "invoke", "hello", "-q", "name=Follow"))
            await shows(b"greeting Follow")  # logged while it follows
        follower.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            code = await follower.wait()
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    stderr = (await errors.read()).decode()
    assert code == 0 and "Traceback" not in stderr, stderr


async def test_every_cli_command_as_a_user_runs_it(stack: Stack, tmp_path: Path) -> None:
    url = stack.gateway.proxy
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORTY_")}
    env["MORTY_CONFIG"] = str(tmp_path / "config.yaml")

    # Management goes through the gateway: wait for Morty's /v1 route there.
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        for _ in range(300):
            if (await client.get("/v1/runtimes")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the gateway never forwarded /v1 to Morty APIs")

    # Contexts.
    fails(await morty(env, "config", "use-context", "nope"), 2, "no context 'nope'")
    ok(await morty(env, "config", "set-context", "elsewhere", "--url", "http://127.0.0.1:9"))
    saved = ok(
        await morty(env, "config", "set-context", "local", "--url", url, "--token", TOKEN, "--no-use", "-o", "json")
    )
    assert (saved.json()["current"], saved.json()["token_set"], saved.json()["url"]) == (False, True, url)
    assert "elsewhere http://127.0.0.1:9" in ok(await morty(env, "config", "current-context")).stdout
    assert "using context local" in ok(await morty(env, "config", "use-context", "local")).stdout
    current = ok(await morty(env, "config", "current-context", "-o", "json")).json()
    assert current == {"name": "local", "url": url, "token_set": True}
    contexts = ok(await morty(env, "config", "get-contexts", "-o", "json")).json()["items"]
    assert contexts == [
        {"current": "", "name": "elsewhere", "url": "http://127.0.0.1:9"},
        {"current": "*", "name": "local", "url": url},
    ]
    assert "local" in ok(await morty(env, "config", "get-contexts")).stdout

    runtimes = ok(await morty(env, "runtimes", "-o", "json")).json()["items"]
    assert {r["name"] for r in runtimes} >= {"python3.11", "node18"}
    assert "python3.11" in ok(await morty(env, "runtimes")).stdout

    # init -> deploy -> invoke -> logs.
    project = tmp_path / "hello"
    created = ok(await morty(env, "init", "hello", "--runtime", "python3.11", "--dir", str(project), "-o", "json"))
    assert created.json() == {"name": "hello", "runtime": "python3.11", "directory": str(project)}
    assert (project / "main.py").is_file() and 'name: "hello"' in (project / "morty.yaml").read_text()
    with (project / "morty.yaml").open("a") as config:
        config.write("isolation: container\nidle_timeout: 600\n")
    deployed = ok(await morty(env, "deploy", str(project), "-o", "json")).json()
    assert deployed == {"function": "hello", "version": "0.1.0", "status": "ready", "url": f"{url}/fn/hello"}

    invoked = ok(await morty(env, "invoke", "hello", "-q", "name=Ada", "-v"))
    assert json.loads(invoked.stdout) == {"message": "Hello, Ada!"}
    found = re.search(r"^200 OK in [0-9.]+ ms \(invocation (\S+)\)", invoked.stderr, re.MULTILINE)
    assert found, invoked.stderr
    invocation = found.group(1)
    assert re.search(r"^cold start \(booted\): queued [0-9.]+ ms, instance [0-9.]+ ms, function", invoked.stderr, re.M)
    lines = [
        json.loads(line)
        for line in ok(await morty(env, "logs", "hello", "-i", invocation, "-o", "json")).stdout.splitlines()
    ]
    assert [line["line"] for line in lines] == ["greeting Ada"] and lines[0]["invocation"] == invocation
    assert "greeting Ada" in ok(await morty(env, "logs", "hello")).stdout
    await follow_logs(env)
    posted = ok(await morty(env, "invoke", "hello", "-X", "POST", "-d", "@" + str(project / "morty.yaml"), "-v"))
    assert json.loads(posted.stdout) == {"message": "Hello, world!"}
    assert re.search(r"^warm: queued [0-9.]+ ms, instance [0-9.]+ ms, function [0-9.]+ ms", posted.stderr, re.M)

    # list, describe, versions.
    listed = ok(await morty(env, "list", "-o", "json")).json()["items"]
    assert [(f["name"], f["runtime"], f["latest_version"]) for f in listed] == [("hello", "python3.11", "0.1.0")]
    assert re.search(r"hello\s+python3.11\s+0.1.0", ok(await morty(env, "list")).stdout)
    described = ok(await morty(env, "describe", "hello", "-o", "json")).json()
    assert set(described) == {"function", "versions", "aliases", "instances"}
    assert described["function"]["isolation"] == "container" and len(described["instances"]) == 1
    assert "versions:       0.1.0 (ready)" in ok(await morty(env, "describe", "hello")).stdout

    # A second version, then an alias on the first.
    second = ok(await morty(env, "deploy", str(project), "-o", "json")).json()
    assert second["version"] == "0.1.1"
    versions = ok(await morty(env, "versions", "hello", "-o", "json")).json()["items"]
    assert [v["version"] for v in versions] == ["0.1.1", "0.1.0"]
    assert ok(await morty(env, "alias", "set", "hello", "prod", "0.1.0", "-o", "json")).json()["version"] == "0.1.0"
    assert ok(await morty(env, "alias", "list", "hello", "-o", "json")).json()["items"][0]["version"] == "0.1.0"
    assert "hello@prod -> 0.1.1" in ok(await morty(env, "alias", "set", "hello", "prod", "0.1.1")).stdout
    assert "prod" in ok(await morty(env, "alias", "list", "hello")).stdout
    answer = ok(await morty(env, "invoke", "hello", "--version", "prod", "-o", "json")).json()
    assert (answer["status"], json.loads(answer["body"])) == (200, {"message": "Hello, world!"})
    assert answer["headers"]["content-type"].startswith("application/json") and answer["invocation"]
    gone = {"function": "hello", "alias": "prod", "deleted": True}
    assert ok(await morty(env, "alias", "delete", "hello", "prod", "-o", "json")).json() == gone

    # scale, secrets.
    scaled = ok(await morty(env, "scale", "hello", "--min", "0", "--max", "3", "-o", "json")).json()
    assert (scaled["min_instances"], scaled["max_instances"]) == (0, 3)
    assert (
        "secret API_KEY of hello stored"
        in ok(await morty(env, "secrets", "set", "hello", "API_KEY", stdin="v3ry-s3cret\n")).stdout
    )
    secrets = ok(await morty(env, "secrets", "list", "hello", "-o", "json"))
    assert [s["name"] for s in secrets.json()["items"]] == ["API_KEY"] and "v3ry-s3cret" not in secrets.stdout
    removed = ok(await morty(env, "secrets", "delete", "hello", "API_KEY", "-o", "json")).json()
    assert removed == {"function": "hello", "secret": "API_KEY", "deleted": True}

    # Bad input: one line on stderr, a meaningful exit code, and nothing half-created.
    fails(await morty(env, "describe", "nope"), 1, "error: 404: no function named 'nope'")
    fails(await morty(env, "invoke", "hello", "-H", "no-colon"), 2, "is not 'Name: value'")
    fails(await morty(env, "deploy", str(tmp_path / "nowhere")), 2, "is not a directory")
    fails(await morty(env, "scale", "hello"), 2, "give --min and/or --max")
    usage = await morty(env, "list", "--bogus")
    assert usage.code == 2 and "No such option: --bogus" in usage.stderr and "Traceback" not in usage.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(await morty(env, "deploy", str(empty)), 2, f"no morty.yaml in {empty}; create one with `morty init`")
    fails(
        await morty(env, "init", "cobol", "--runtime", "cobol85", "--dir", str(tmp_path / "cobol")),
        2,
        "unknown runtime 'cobol85'; known: node18",
    )
    assert not (tmp_path / "cobol").exists()
    fails(
        await morty(env, "init", "Bad_Name", "--dir", str(tmp_path / "Bad_Name")),
        2,
        "'Bad_Name' is not a function name",
    )
    assert not (tmp_path / "Bad_Name").exists()
    fails(await morty(env, "init", "hello", "--dir", str(project)), 2, f"{project} exists and is not empty")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "morty.yaml").write_text("name: unknown\nruntime: cobol85\n")
    fails(await morty(env, "deploy", str(unknown)), 1, "error: 422: invalid request: runtime")
    taken = tmp_path / "taken"
    ok(await morty(env, "init", "hello", "--runtime", "node18", "--dir", str(taken)))
    assert {p.name for p in taken.iterdir()} >= {"morty.yaml", "main.js", "package.json"}
    fails(await morty(env, "deploy", str(taken)), 1, "the name 'hello' is taken by a python3.11 function")
    wrong_token = await morty({**env, "MORTY_TOKEN": "not-the-token"}, "list")
    fails(wrong_token, 1, "error: 401: invalid bearer token: check the token of context local")
    fails(await morty({**env, "MORTY_URL": "http://127.0.0.1:9"}, "list"), 3, "cannot reach http://127.0.0.1:9")
    listed = ok(await morty(env, "list", "-o", "json")).json()["items"]
    assert [f["name"] for f in listed] == ["hello"]
    assert [v["version"] for v in ok(await morty(env, "versions", "hello", "-o", "json")).json()["items"]] == [
        "0.1.1",
        "0.1.0",
    ]

    deleted = ok(await morty(env, "delete", "hello", "--yes", "-o", "json")).json()
    assert (deleted["name"], deleted["versions"], deleted["aliases"]) == ("hello", 2, 0)
    assert ok(await morty(env, "list", "-o", "json")).json()["items"] == []
