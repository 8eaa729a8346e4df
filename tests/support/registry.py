"""Start and stop a local OCI registry through ``scripts/registry`` (used by the ``registry`` fixture)."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_SCRIPT = REPO_ROOT / "scripts" / "registry"


@dataclass(frozen=True)
class RunningRegistry:
    data_dir: Path
    port: int
    pid: int

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a process that has not exited (zombies count as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X")


def _registry_script(*args: str) -> str:
    # The script starts the registry with its output sent to a log file, so capturing the
    # script's own output cannot hang on a pipe held by the background process.
    proc = subprocess.run(
        ["bash", str(REGISTRY_SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/registry {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


def start_registry(data_dir: Path, port: int | None = None) -> RunningRegistry:
    """Start a registry storing under ``data_dir`` on ``port`` (default: a free one)."""
    port = free_tcp_port() if port is None else port
    _registry_script("start", "--data", str(data_dir), "--port", str(port))
    pid = int((data_dir / "registry.pid").read_text())
    return RunningRegistry(data_dir=data_dir, port=port, pid=pid)


def stop_registry(registry: RunningRegistry) -> None:
    """Stop ``registry`` and check that its process is gone."""
    _registry_script("stop", "--data", str(registry.data_dir))
    if pid_alive(registry.pid):
        raise RuntimeError(f"registry pid {registry.pid} is still alive after scripts/registry stop")
