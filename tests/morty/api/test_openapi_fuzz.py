"""A property-based run of schemathesis over Morty APIs' OpenAPI document, against a real
`morty-api` process, authenticated: no request may get a 5xx, an undocumented answer, or hang."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.services import run_schemathesis, service_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "fuzz-token-0123456789"


@pytest.fixture
def morty_url(tmp_path: Path) -> Iterator[str]:
    args = ["--database", f"sqlite:///{tmp_path / 'morty.db'}", "--data-dir", str(tmp_path / "data")]
    log = tmp_path / "morty.log"
    with service_process("morty.api", args, log, env={**os.environ, "MORTY_TOKEN": TOKEN}) as url:
        # Something to find, so the fuzzer reaches more than 404s.
        auth = {"Authorization": f"Bearer {TOKEN}"}
        created = httpx.post(f"{url}/v1/functions", json={"name": "hello", "runtime": "python3.11"}, headers=auth)
        created.raise_for_status()
        httpx.post(f"{url}/v1/functions/hello/versions", json={"version": "1.0.0"}, headers=auth).raise_for_status()
        yield url
    assert "Traceback" not in log.read_text()


def test_no_request_breaks_morty_api(morty_url: str) -> None:
    result = run_schemathesis(
        f"{morty_url}/openapi.json",
        examples=int(os.environ.get("MORTY_FUZZ_EXAMPLES", "40")),
        headers=[f"Authorization: Bearer {TOKEN}"],
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
