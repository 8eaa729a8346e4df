"""Shared bits for benchmarks: start a real controller process, and report figures.

`report()` also writes the figures as JSON to the file named by `$BENCH_RESULT`, when set: that is how
`bench.report` collects every benchmark's figures.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

RESULT_ENV = "BENCH_RESULT"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def controller(workdir: Path, *extra: str, database: str | None = None) -> Iterator[str]:
    """A `rik-controller` process on a free loopback port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (workdir / "controller.log").open("wb")
    argv = [sys.executable, "-m", "rik.controller", "--listen", f"127.0.0.1:{port}"]
    argv += ["--database", database or f"sqlite:///{workdir / 'controller.db'}", *extra]
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RIK_LOG_LEVEL": "WARNING"}
    )
    try:
        wait_http(f"{url}/healthz", 30, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def wait_http(url: str, seconds: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids`, from /proc."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def report(title: str, rows: list[tuple[str, str]], figures: dict[str, Any]) -> None:
    """Print a human table and one JSON line (for the benchmark report)."""
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}\n" + "-" * len(title))
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    result = {"benchmark": title, **figures}
    print("JSON " + json.dumps(result))
    if path := os.environ.get(RESULT_ENV):
        Path(path).write_text(json.dumps({**result, "rows": rows}, indent=2) + "\n")


@contextmanager
def riklet(
    workdir: Path, url: str, name: str, bridge: str, *options: str, guest_dir: Path | None = None
) -> Iterator[Path]:
    """A `riklet` process registered with the controller at `url`; yields its data directory. On exit it
    is stopped and `riklet --teardown` removes every instance it ran, its bridge and firewall rules."""
    data_dir = workdir / "riklet"
    port = free_port()
    guest = ["--guest-dir", str(guest_dir)] if guest_dir else []
    common = ["--name", name, "--data-dir", str(data_dir), "--bridge", bridge, "--address", "127.0.0.1", *guest]
    argv = [sys.executable, "-m", "rik.riklet", *common, "--controller", url, "--listen", f"127.0.0.1:{port}"]
    argv += [*options, "--log-level", os.environ.get("RIK_LOG_LEVEL", "WARNING")]
    with (workdir / "riklet.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 120, process)
        yield data_dir
    finally:
        stop(process, 60)
        if (data_dir / "subnet").is_file():
            teardown = [sys.executable, "-m", "rik.riklet", "--teardown", *common]
            subprocess.run(teardown, check=False, stdin=subprocess.DEVNULL, capture_output=True)
