"""A property-based run of schemathesis over Morty APIs' OpenAPI document, against a real
`morty-api` process, authenticated: no request may get a 5xx, an undocumented answer, or hang."""

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

TOKEN = "fuzz-token-0123456789"
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
def morty_url(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "morty.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "morty.api",
            "--listen",
            f"127.0.0.1:{port}",
            "--database",
            f"sqlite:///{tmp_path / 'morty.db'}",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MORTY_TOKEN": TOKEN},
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
        pytest.fail(f"morty-api did not start: {(tmp_path / 'morty.log').read_text()[-2000:]}")
    # Something to find, so the fuzzer reaches more than 404s.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    httpx.post(f"{url}/v1/functions", json={"name": "hello", "runtime": "python3.11"}, headers=auth).raise_for_status()
    httpx.post(f"{url}/v1/functions/hello/versions", json={"version": "1.0.0"}, headers=auth).raise_for_status()
    yield url
    process.terminate()
    process.wait(timeout=10)
    assert "Traceback" not in (tmp_path / "morty.log").read_text()


def test_no_request_breaks_morty_api(morty_url: str) -> None:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            f"{morty_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            CHECKS,
            "--max-examples",
            os.environ.get("MORTY_FUZZ_EXAMPLES", "40"),
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
