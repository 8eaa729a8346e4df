"""A property-based run of schemathesis over the controller's OpenAPI document, against the real
controller process: no request may get a 5xx, an undocumented answer, or hang."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.services import run_schemathesis, service_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_no_request_breaks_the_controller(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'rik.db'}"
    with service_process("rik.controller", ["--database", database], tmp_path / "controller.log") as url:
        result = run_schemathesis(
            f"{url}/openapi.json",
            examples=int(os.environ.get("RIK_FUZZ_EXAMPLES", "40")),
            # Streams (watch, follow logs) never end by design; they have their own tests.
            exclude_path_regex="(watch|logs)$",
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
