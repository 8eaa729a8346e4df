"""A property-based run of schemathesis over the controller's OpenAPI document, against the real
controller process: no request may get a 5xx, an undocumented answer, or hang."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


@pytest.fixture
def controller_url(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "controller.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rik.controller",
            "--listen",
            f"127.0.0.1:{port}",
            "--database",
            f"sqlite:///{tmp_path / 'rik.db'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"controller did not start: {(tmp_path / 'controller.log').read_text()[-2000:]}")
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_no_request_breaks_the_controller(controller_url: str, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{controller_url}/openapi.json",
            "--checks",
            CHECKS,
            # Streams (watch, follow logs) never end by design; they have their own tests.
            "--exclude-path-regex",
            "(watch|logs)$",
            "--max-examples",
            os.environ.get("RIK_FUZZ_EXAMPLES", "40"),
            "--request-timeout",
            "10",
            "--seed",
            "20261127",
            "--no-color",
            "--phases",
            "fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
