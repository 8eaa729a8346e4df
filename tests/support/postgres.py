"""A throwaway PostgreSQL server for tests: its own data directory, a free loopback port, trust auth."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.registry import free_tcp_port


def postgres_bin() -> Path:
    """The newest installed server's bin directory (Debian's postgresql-NN package)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("no PostgreSQL server installed (apt install postgresql; scripts/setup does)")
    return Path(candidates[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """Server tools refuse to run as root: run them as the `postgres` account the package creates."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres_server(host: str = "127.0.0.1", clients: str | None = None) -> Iterator[str]:
    """Start a server listening on `host` in a new directory under /tmp (the `postgres` account must
    reach it, which pytest's private temp dirs do not allow); yields `host:port`, removes everything on exit.
    `clients` (a CIDR) are trusted too, besides the loopback addresses."""
    bin_dir = postgres_bin()
    directory = Path(tempfile.mkdtemp(prefix="rik-postgres-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = free_tcp_port()
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    if clients:
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {clients} trust\n")
    log = directory / "server.log"
    subprocess.run(
        _as_postgres(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start", "-o"]
            + [f"-h {host} -p {port} -k {directory} -c fsync=off -c max_connections=200"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"{host}:{port}"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def create_database(address: str, name: str) -> str:
    """Create database `name`; returns its SQLAlchemy URL."""
    host, _, port = address.partition(":")
    bin_dir = postgres_bin()
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(
            [str(bin_dir / "createdb"), "-h", host, "-p", port, "-U", "postgres", name], capture_output=True, text=True
        )
        if result.returncode == 0:
            return f"postgresql://postgres@{address}/{name}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"createdb {name} failed: {result.stderr}")
        time.sleep(0.2)
