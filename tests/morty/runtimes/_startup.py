"""Measure the Python runtime's start: process spawn -> first HTTP 200 from the example function (not a test).

uv run python -m tests.morty.runtimes._startup [PYTHON] [RUNS]     # default: /usr/bin/python3, 20 runs
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time

from tests.morty.runtimes._support import EXAMPLE, SERVER, env, free_port


def first_200(port: int) -> None:
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port))
        except OSError:
            time.sleep(0.001)
            continue
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        if data.startswith(b"HTTP/1.1 200"):
            return


def main() -> None:
    python = sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/python3"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    times = []
    for _ in range(runs):
        port = free_port()
        started = time.perf_counter()
        process = subprocess.Popen(
            [python, str(SERVER)],
            env=env(MORTY_PORT=port, MORTY_CODE_DIR=EXAMPLE),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        first_200(port)
        times.append((time.perf_counter() - started) * 1000)
        process.terminate()
        process.wait()
    print(
        f"{python}: start -> first 200: median {statistics.median(times):.1f} ms, "
        f"min {min(times):.1f}, max {max(times):.1f} (n={runs})"
    )


if __name__ == "__main__":
    main()
