"""`morty up` as a user runs it: the whole platform from one command, a function deployed (as a VM, the default)
and invoked through the gateway, a crashed service restarted and reported by `morty status`, and `morty down`
leaving no process, bridge, namespace or qemu behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rik.e2e._cluster import link_names, netns_names, pid_alive, qemu_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "src" / "morty" / "runtimes" / "python" / "example"


def morty(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "morty.cli", *args], env=env, capture_output=True, text=True, timeout=900, check=False
    )


def _processes_with(fragment: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and pid_alive(int(entry.name)):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if fragment in cmdline and "pytest" not in cmdline:
                found.append(cmdline)
    return found


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_morty_up_runs_the_platform_and_down_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORTY_")}
    env["MORTY_CONFIG"] = str(tmp_path / "config.yaml")
    bridge = f"mup{os.getpid() % 100000}"
    base = 20000 + (os.getpid() % 200) * 10
    up = ok(morty(env, "up", "--data-dir", str(data), "--ports-from", str(base), "--bridge", bridge, "-o", "json"))
    status = json.loads(up.stdout)
    assert status["url"] == f"http://127.0.0.1:{base}"
    assert set(status["services"]) == {"registry", "controller", "riklet", "gateway", "morty-api"}
    pids = {name: entry["pid"] for name, entry in status["services"].items()}
    try:
        deployed = json.loads(ok(morty(env, "deploy", str(EXAMPLE), "-o", "json")).stdout)
        assert deployed["status"] == "ready" and deployed["url"] == f"http://127.0.0.1:{base}/fn/echo"
        answer = json.loads(ok(morty(env, "invoke", "echo", "-q", "name=Ada")).stdout)
        assert answer["greeting"] == "Hello, Ada!"
        described = json.loads(ok(morty(env, "describe", "echo", "-o", "json")).stdout)
        assert described["function"]["isolation"] == "vm" and described["instances"][0]["start_path"] == "restored"
        assert qemu_processes(str(data)), "the function runs in a VM"

        # A crashed service is restarted and reported.
        os.kill(pids["gateway"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            current = json.loads(morty(env, "status", "--data-dir", str(data), "-o", "json").stdout or "{}")
            gateway = current.get("services", {}).get("gateway", {})
            if gateway.get("restarts") == 1 and gateway.get("healthy"):
                break
            assert time.monotonic() < deadline, f"the gateway was not restarted: {current}"
            time.sleep(0.2)
        assert json.loads(ok(morty(env, "invoke", "echo", "-q", "name=Bob")).stdout)["greeting"] == "Hello, Bob!"
    finally:
        down = morty(env, "down", "--data-dir", str(data))
    assert down.returncode == 0, down.stderr
    assert "down" in down.stdout
    current = morty(env, "status", "--data-dir", str(data))
    assert current.returncode == 1 and "not running" in current.stderr
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not _processes_with(f":{base}"), "no gateway worker outlives its gateway (killed -9 above)"
    assert not qemu_processes(str(data))
    assert bridge not in link_names()
    assert not [ns for ns in netns_names() if str(data) in ns]
