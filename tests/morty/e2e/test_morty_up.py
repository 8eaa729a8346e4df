"""`morty up` as a user runs it: the whole platform from one command, a function deployed (as a VM, the default)
and invoked through the gateway, a crashed service restarted and reported by `morty status`, and `morty down`
leaving no process, namespace, veth, bridge, mount, iptables chain or qemu behind.

The README's quickstart runs exactly as the README states it (its commands are read from README.md), on a host
where VMs cannot run (QEMU hidden from PATH): `morty up` falls back to containers and says so, `morty status`
shows it, and a function asking for a VM is refused in one line with nothing created."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from morty.cli.platform import NO_VM
from tests.rik.e2e._cluster import node_leftovers, pid_alive, qemu_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "src" / "morty" / "runtimes" / "python" / "example"
README_URL = "http://127.0.0.1:8080"
"""The gateway URL the README's quickstart uses (morty up's default port); the test's platform has its own."""


def morty(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "morty.cli", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def platform_env(tmp_path: Path) -> tuple[dict[str, str], Path, str, int]:
    """The environment, data directory, bridge and first port of this test's platform (its own ports, bridge and
    CLI configuration, so it runs beside other platforms)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORTY_")}
    env["MORTY_CONFIG"] = str(tmp_path / "config.yaml")
    return env, tmp_path / "platform", f"mup{os.getpid() % 100000}", 20000 + (os.getpid() % 200) * 10


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


def assert_down_leaves_nothing(
    env: dict[str, str], data: Path, bridge: str, base: int, pids: dict[str, int], instances: set[str]
) -> None:
    """After `morty down`: no service, gateway worker or other process naming the data directory, and nothing of
    the node (container processes, cgroups, namespaces, veths, bridge, iptables chains, qemu, QMP sockets, mounts)."""
    current = morty(env, "status", "--data-dir", str(data))
    assert current.returncode == 1 and "not running" in current.stderr
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not _processes_with(f":{base}"), "no gateway worker outlives its gateway"
    assert not _processes_with(str(data))
    assert not node_leftovers(data / "rik" / "node", bridge, instances)
    assert not [line for line in Path("/proc/mounts").read_text().splitlines() if str(data) in line]


def test_morty_up_runs_the_platform_and_down_leaves_nothing(tmp_path: Path) -> None:
    env, data, bridge, base = platform_env(tmp_path)
    up = ok(morty(env, "up", "--data-dir", str(data), "--ports-from", str(base), "--bridge", bridge, "-o", "json"))
    status = json.loads(up.stdout)
    assert status["url"] == f"http://127.0.0.1:{base}"
    assert status["vms"] == {"available": True, "reason": None}
    assert set(status["services"]) == {"registry", "controller", "riklet", "gateway", "morty-api"}
    pids = {name: entry["pid"] for name, entry in status["services"].items()}
    instances: set[str] = set()
    try:
        deployed = json.loads(ok(morty(env, "deploy", str(EXAMPLE), "-o", "json")).stdout)
        assert deployed["status"] == "ready" and deployed["url"] == f"http://127.0.0.1:{base}/fn/echo"
        answer = json.loads(ok(morty(env, "invoke", "echo", "-q", "name=Ada")).stdout)
        assert answer["greeting"] == "Hello, Ada!"
        described = json.loads(ok(morty(env, "describe", "echo", "-o", "json")).stdout)
        assert described["function"]["isolation"] == "vm" and described["instances"][0]["start_path"] == "restored"
        instances |= {i["id"] for i in described["instances"]}
        assert qemu_processes(str(data)), "the function runs in a VM"
        assert "VMs: available" in ok(morty(env, "status", "--data-dir", str(data))).stdout

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
    assert_down_leaves_nothing(env, data, bridge, base, pids, instances)


def readme_quickstart() -> list[str]:
    """The command lines of the README's quickstart: the first `sh` block of its Quickstart section."""
    section = (REPO / "README.md").read_text().split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def path_without(directory: Path, *hidden: str) -> str:
    """A PATH with every program of this one but those whose name starts with one of `hidden` (a host without
    them): one directory of links to the first of each name."""
    directory.mkdir()
    for source in os.environ["PATH"].split(os.pathsep):
        for program in sorted(Path(source).iterdir()) if Path(source).is_dir() else []:
            link = directory / program.name
            if program.name.startswith(hidden) or link.is_symlink() or not os.access(program, os.X_OK):
                continue
            if program.is_file():
                link.symlink_to(program)
    return str(directory)


def test_the_readme_quickstart_on_a_host_without_vms(tmp_path: Path) -> None:
    env, data, bridge, base = platform_env(tmp_path)
    url = f"http://127.0.0.1:{base}"
    # `uv run` finds the project from anywhere (the quickstart's `hello/` goes to a scratch directory); `morty up`,
    # `status` and `down` take their data directory, ports and bridge from the environment.
    env |= {"UV_PROJECT": str(REPO), "UV_FROZEN": "1", "MORTY_DATA": str(data), "MORTY_PORTS_FROM": str(base)}
    env |= {"MORTY_BRIDGE": bridge, "PATH": path_without(tmp_path / "bin", "qemu-system-", "qemu-img")}
    work = tmp_path / "work"
    work.mkdir()
    commands = readme_quickstart()
    assert sum(README_URL in line for line in commands) == 1, "only the curl line names the gateway"
    ran: dict[str, subprocess.CompletedProcess[str]] = {}
    try:
        for line in (c.replace(README_URL, url) for c in commands):
            done = subprocess.run(
                ["bash", "-c", line],
                env=env, cwd=work, capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
            ran[" ".join(shlex.split(line, comments=True)[:5])] = done
        assert list(ran) == [
            "uv run morty up",
            "uv run morty init hello",
            "uv run morty deploy hello",
            "uv run morty invoke hello",
            f"curl {url}/fn/hello?name=Ada",
            "uv run morty logs hello",
        ], "the quickstart is init, deploy, invoke and logs on a platform that morty up started"
        up = ran["uv run morty up"].stdout
        assert f"The platform is up: {url}" in up
        assert "VMs: NOT AVAILABLE (qemu-system-x86_64 and qemu-img are not installed)" in up
        assert (work / "hello" / "morty.yaml").is_file()
        assert f"hello 0.1.0 is ready: {url}/fn/hello" in ran["uv run morty deploy hello"].stdout
        invoked = ran["uv run morty invoke hello"]
        assert json.loads(invoked.stdout) == {"message": "Hello, Ada!"}
        found = re.search(r"^200 OK in [0-9.]+ ms \(invocation (\S+)\)", invoked.stderr, re.MULTILINE)
        assert found, invoked.stderr
        assert json.loads(ran[f"curl {url}/fn/hello?name=Ada"].stdout) == {"message": "Hello, Ada!"}
        assert f"{found.group(1)} greeting Ada" in ran["uv run morty logs hello"].stdout

        # The fallback is stated wherever the user looks, and the function runs as a container.
        status = json.loads(ok(morty(env, "status", "-o", "json")).stdout)
        assert status["vms"] == {"available": False, "reason": "qemu-system-x86_64 and qemu-img are not installed"}
        assert "VMs: NOT AVAILABLE (qemu-system-x86_64" in ok(morty(env, "status")).stdout
        pids = {name: entry["pid"] for name, entry in status["services"].items()}
        described = json.loads(ok(morty(env, "describe", "hello", "-o", "json")).stdout)
        assert described["function"]["isolation"] == "container" and described["instances"]
        instances = {i["id"] for i in described["instances"]}

        # Asking for a VM is refused in one line, and nothing is created: no function, no version.
        vm = work / "vm"
        vm.mkdir()
        (vm / "main.py").write_text((work / "hello" / "main.py").read_text())
        (vm / "morty.yaml").write_text("name: vm\nruntime: python3.11\nisolation: vm\n")
        (work / "hello" / "morty.yaml").write_text((work / "hello" / "morty.yaml").read_text() + "isolation: vm\n")
        for directory in (vm, work / "hello"):
            refused = morty(env, "deploy", str(directory))
            assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
            assert "VMs are not available on this platform (qemu-system-x86_64" in refused.stderr
        assert [f["name"] for f in json.loads(ok(morty(env, "list", "-o", "json")).stdout)["items"]] == ["hello"]
        versions = json.loads(ok(morty(env, "versions", "hello", "-o", "json")).stdout)["items"]
        assert [v["version"] for v in versions] == ["0.1.0"]
    finally:
        down = morty(env, "down")
    assert down.returncode == 0, down.stderr
    assert_down_leaves_nothing(env, data, bridge, base, pids, instances)

    # `--no-vm` turns VMs off where they could run, and says so.
    env["PATH"] = os.environ["PATH"]
    try:
        up = json.loads(ok(morty(env, "up", "--no-vm", "-o", "json")).stdout)
        assert up["vms"] == {"available": False, "reason": NO_VM}
        assert f"VMs: NOT AVAILABLE ({NO_VM})" in ok(morty(env, "status")).stdout
        pids = {name: entry["pid"] for name, entry in up["services"].items()}
    finally:
        down = morty(env, "down", "-o", "json")
    assert json.loads(ok(down).stdout) == {"was_running": True}
    assert_down_leaves_nothing(env, data, bridge, base, pids, set())
    assert json.loads(ok(morty(env, "down", "-o", "json")).stdout) == {"was_running": False}
