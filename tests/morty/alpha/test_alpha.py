"""alpha as a real process: readiness, logs by invocation, restarts, giving up, signal forwarding, image layout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.morty.runtimes._support import (
    ALPHA_MAIN,
    EXAMPLE,
    MORTY_DIR,
    SERVER,
    Reply,
    accepts,
    env,
    free_port,
    pid_gone,
    read_line,
    request,
    stop,
    try_request,
    wait_for,
)

CRASHY_HANDLER = """
import os

def handler(request):
    if request.path == "/crash":
        os._exit(3)
    return {"pid": os.getpid()}
"""


class Alpha:
    def __init__(self, process: subprocess.Popen[bytes], port: int, control: int, stderr: Path) -> None:
        self.process = process
        self.port = port
        self.control = control
        self.stderr = stderr

    def get(self, target: str) -> Reply | None:
        return try_request(self.control, target)

    def health(self) -> dict[str, object]:
        reply = self.get("/healthz")
        assert reply is not None
        return dict(reply.json())

    def logs(self, query: str) -> list[dict[str, object]]:
        reply = self.get(f"/logs?{query}")
        assert reply is not None and reply.status == 200
        return [json.loads(line) for line in reply.body.decode().split("\n") if line]


def start_alpha(tmp_path: Path, command: list[str] | None = None, cwd: Path | None = None, **extra: str) -> Alpha:
    port, control = free_port(), free_port()
    stderr = tmp_path / "alpha.stderr"
    values: dict[str, str] = {
        "MORTY_PORT": str(port),
        "MORTY_ALPHA_PORT": str(control),
        "MORTY_CODE_DIR": str(EXAMPLE),
        "MORTY_ALPHA_GRACE": "5",
        **extra,
    }
    values.setdefault("MORTY_RUNTIME_CMD", f"{sys.executable} {SERVER}")
    process = subprocess.Popen(
        command or [sys.executable, str(ALPHA_MAIN)],
        env=env(**values),
        stdout=subprocess.PIPE,
        stderr=stderr.open("wb"),
        cwd=cwd,
    )
    return Alpha(process, port, control, stderr)


@pytest.fixture
def cleanup() -> Iterator[list[Alpha]]:
    started: list[Alpha] = []
    yield started
    for alpha in started:
        stop(alpha.process)


def test_ready_only_once_the_runtime_accepts_then_serves_the_example(tmp_path: Path, cleanup: list[Alpha]) -> None:
    gate = tmp_path / "gate"
    # The runtime waits for the gate file before exec'ing the real server: alpha must report 503 until then.
    waiter = tmp_path / "waiter.py"
    waiter.write_text(
        f"import os, sys, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
        f"os.execv(sys.executable, [sys.executable, {str(SERVER)!r}])\n"
    )
    alpha = start_alpha(tmp_path, MORTY_RUNTIME_CMD=f"{sys.executable} {waiter}")
    cleanup.append(alpha)
    before = wait_for(lambda: alpha.get("/ready"), what="the control port")
    assert before.status == 503 and before.json()["ready"] is False
    assert not accepts(alpha.port)
    gate.touch()
    ready = wait_for(lambda: (r := alpha.get("/ready")) and r.status == 200 and r, what="/ready 200")
    assert accepts(alpha.port)
    line = read_line(alpha.process.stdout, timeout=10)
    assert line.startswith("MORTY-READY ")
    assert int(line.split()[1]) >= 0 and ready.json()["ready_ms"] is not None
    reply = request(alpha.port, "GET", "/?name=Ada")
    assert (reply.status, reply.json()["greeting"]) == (200, "Hello, Ada!")
    health = alpha.health()
    assert health["status"] == "ready" and health["restarts"] == 0 and isinstance(health["runtime_pid"], int)


def test_logs_of_one_invocation_by_id_and_in_the_log_file(tmp_path: Path, cleanup: list[Alpha]) -> None:
    log_file = tmp_path / "alpha.jsonl"
    alpha = start_alpha(tmp_path, MORTY_LOG_FILE=str(log_file))
    cleanup.append(alpha)
    wait_for(lambda: (r := alpha.get("/ready")) and r.status == 200, what="ready")
    request(alpha.port, "GET", "/one", headers={"X-Morty-Invocation-Id": "inv-one"})
    request(alpha.port, "GET", "/two", headers={"X-Morty-Invocation-Id": "inv-two"})
    assert request(alpha.port, "GET", "/?fail=1", headers={"X-Morty-Invocation-Id": "inv-fail"}).status == 500

    one = wait_for(lambda: alpha.logs("invocation=inv-one"), what="inv-one's logs")
    assert [(r["stream"], r["invocation"], r["line"]) for r in one] == [
        ("stdout", "inv-one", "echo: GET /one from invocation inv-one")
    ]
    last = "RuntimeError: failing on request (fail=1)"
    failed = wait_for(
        lambda: (r := alpha.logs("invocation=inv-fail")) and r[-1]["line"] == last and r, what="the traceback"
    )
    assert {r["stream"] for r in failed} == {"stderr"}
    assert failed[0]["line"] == "handler raised RuntimeError (500)"
    assert all(isinstance(r["ts"], float) for r in failed)

    everything = alpha.logs("")
    seqs = [int(str(r["seq"])) for r in everything]
    assert seqs == sorted(seqs)
    assert alpha.logs(f"after={seqs[0]}&limit=2") == everything[1:3]
    assert alpha.logs("limit=1") == everything[-1:]
    assert alpha.logs(f"since={everything[-1]['ts']}")[0] == everything[-1]
    assert alpha.get("/logs?limit=x").status == 400  # type: ignore[union-attr]
    in_file = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [r for r in in_file if r["invocation"] == "inv-one"] == one


def test_crashed_runtime_is_restarted_and_serves_again(tmp_path: Path, cleanup: list[Alpha]) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "main.py").write_text(CRASHY_HANDLER)
    alpha = start_alpha(tmp_path, MORTY_CODE_DIR=str(code), MORTY_ALPHA_BACKOFF="0.05")
    cleanup.append(alpha)
    wait_for(lambda: (r := alpha.get("/ready")) and r.status == 200, what="ready")
    first = alpha.health()["runtime_pid"]
    assert request(alpha.port, "GET", "/").json()["pid"] == first
    assert try_request(alpha.port, "/crash") is None  # the connection dies with the runtime

    health = wait_for(
        lambda: (h := alpha.health())["status"] == "ready" and h["runtime_pid"] not in (None, first) and h,
        what="a new runtime",
    )
    assert health["restarts"] == 1 and health["last_exit"] == 3
    assert pid_gone(int(str(first)))
    assert request(alpha.port, "GET", "/").json()["pid"] == health["runtime_pid"]
    events = [r["line"] for r in alpha.logs("") if r["stream"] == "alpha"]
    assert any("exited unexpectedly with exit code 3" in str(line) for line in events)


def test_crash_loop_gives_up_with_the_reason(tmp_path: Path, cleanup: list[Alpha]) -> None:
    crash = 'import sys; sys.stderr.write("cannot import main: boom-reason\\n"); sys.exit(4)'
    alpha = start_alpha(
        tmp_path,
        MORTY_RUNTIME_CMD=f"{sys.executable} -c '{crash}'",
        MORTY_ALPHA_MAX_RESTARTS="3",
        MORTY_ALPHA_BACKOFF="0.01",
    )
    cleanup.append(alpha)
    failed = wait_for(lambda: (r := alpha.get("/healthz")) and r.status == 503 and r, what="/healthz 503")
    health = failed.json()
    assert health["status"] == "failed" and health["runtime_pid"] is None and health["restarts"] == 2
    assert "3 times" in health["reason"] and "exit code 4" in health["reason"] and "boom-reason" in health["reason"]
    assert alpha.get("/ready").status == 503  # type: ignore[union-attr]
    assert "giving up" in alpha.stderr.read_text()
    time.sleep(0.2)  # a bounded look for an unwanted restart: the count must stay put
    assert alpha.health()["restarts"] == 2
    alpha.process.send_signal(signal.SIGTERM)
    assert alpha.process.wait(10) == 4  # exits with the last runtime's code


def test_sigterm_is_forwarded_and_alpha_exits_with_the_runtime_code(tmp_path: Path, cleanup: list[Alpha]) -> None:
    marker = tmp_path / "runtime-got"
    child_pid = tmp_path / "grandchild.pid"
    runtime = tmp_path / "runtime.py"
    runtime.write_text(
        "import os, signal, socket, subprocess, sys\n"
        "def on_term(signum, frame):\n"
        f"    open({str(marker)!r}, 'w').write(signal.Signals(signum).name)\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "sleeper = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(sleeper.pid))\n"
        "server = socket.create_server(('127.0.0.1', int(os.environ['MORTY_PORT'])))\n"
        "signal.pause()\n"
    )
    alpha = start_alpha(tmp_path, MORTY_RUNTIME_CMD=f"{sys.executable} {runtime}")
    cleanup.append(alpha)
    wait_for(lambda: (r := alpha.get("/ready")) and r.status == 200, what="ready")
    runtime_pid = int(str(alpha.health()["runtime_pid"]))
    grandchild = int(wait_for(lambda: child_pid.exists() and child_pid.read_text(), what="the grandchild"))

    alpha.process.send_signal(signal.SIGTERM)
    assert alpha.process.wait(10) == 7
    assert marker.read_text() == "SIGTERM"
    wait_for(lambda: pid_gone(runtime_pid) and pid_gone(grandchild), what="no process left behind")


def test_runtime_killed_by_signal_gives_128_plus_n(tmp_path: Path, cleanup: list[Alpha]) -> None:
    # A runtime that ignores SIGTERM is SIGKILLed after the grace period; alpha reports 128 + 9.
    stubborn = "import os, signal, socket; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    stubborn += 's = socket.create_server(("127.0.0.1", int(os.environ["MORTY_PORT"]))); signal.pause()'
    alpha = start_alpha(tmp_path, MORTY_RUNTIME_CMD=f"{sys.executable} -c '{stubborn}'", MORTY_ALPHA_GRACE="0.3")
    cleanup.append(alpha)
    wait_for(lambda: (r := alpha.get("/ready")) and r.status == 200, what="ready")
    started = time.monotonic()
    alpha.process.send_signal(signal.SIGTERM)
    assert alpha.process.wait(10) == 128 + signal.SIGKILL
    assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize("how", ["file", "module"])
def test_runs_from_the_image_layout_with_the_standard_library_only(
    tmp_path: Path, cleanup: list[Alpha], how: str
) -> None:
    # The builder copies alpha/ and runtimes/ under /opt/morty; -I -S: no site-packages, no PYTHONPATH, no cwd.
    root = tmp_path / "opt" / "morty"
    shutil.copytree(MORTY_DIR / "alpha", root / "alpha", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(MORTY_DIR / "runtimes", root / "runtimes", ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-I", "-S"]
    command += [str(root / "alpha" / "__main__.py")] if how == "file" else ["-m", "alpha"]
    alpha = start_alpha(tmp_path, command, cwd=root if how == "module" else tmp_path, MORTY_RUNTIME_CMD="")
    cleanup.append(alpha)
    if how == "module":  # -I drops the cwd from sys.path: -m alpha needs it back, as PYTHONPATH=/opt/morty would
        stop(alpha.process)
        alpha = start_alpha(tmp_path, [sys.executable, "-S", "-m", "alpha"], cwd=root, MORTY_RUNTIME_CMD="")
        cleanup.append(alpha)
    assert read_line(alpha.process.stdout, timeout=30).startswith("MORTY-READY ")
    assert request(alpha.port, "GET", "/?name=image").json()["greeting"] == "Hello, image!"
    assert str(root / "runtimes" / "python" / "server.py") in alpha.stderr.read_text()  # the default runtime command


def test_bad_configuration_exits_2_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ALPHA_MAIN)],
        env={**os.environ, "MORTY_ALPHA_PORT": "http"},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"MORTY_ALPHA_PORT" in result.stderr
