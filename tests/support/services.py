"""Run the project's services for tests: an ASGI app in-process on a loopback port, or a service as a
real process; and the schemathesis property-based run over a service's OpenAPI document."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.support.registry import free_tcp_port

FUZZ_CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


@asynccontextmanager
async def served(app: Any, port: int) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1:`port` in this event loop; yields its base URL.

    A real server rather than httpx's ASGI transport, which buffers whole responses and so cannot
    carry a stream."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextmanager
def service_process(
    module: str, args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Run `python -m module --listen 127.0.0.1:PORT *args` until its /healthz answers; yields its URL.
    Stops it on exit."""
    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--listen", f"127.0.0.1:{port}", *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{module} did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_schemathesis(
    openapi_url: str, *, examples: int, headers: Sequence[str] = (), exclude_path_regex: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A deterministic schemathesis fuzzing run; its exit status is 0 when no check failed."""
    argv = [str(Path(sys.executable).with_name("schemathesis")), "run", openapi_url, "--checks", FUZZ_CHECKS]
    for header in headers:
        argv += ["--header", header]
    if exclude_path_regex:
        argv += ["--exclude-path-regex", exclude_path_regex]
    argv += ["--max-examples", str(examples), "--request-timeout", "10", "--seed", "20261127"]
    argv += ["--no-color", "--phases", "fuzzing"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)
