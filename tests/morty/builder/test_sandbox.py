"""The sandbox pip runs in: unprivileged, read-only root, writable only where asked, killed at its timeout."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from morty.builder._tools import BuildError
from morty.builder.base import BaseImage, ensure_base_image
from morty.builder.sandbox import NOBODY, RUNC_ROOT, Mount, Sandbox, SandboxLimits

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

PROBE = """
import os
print("uid", os.getuid())
for path in ("/usr/probe", "/out/probe"):
    try:
        open(path, "w").write("x")
        print("wrote", path)
    except OSError as exc:
        print("denied", path, exc.errno)
"""


@pytest.fixture(scope="module")
def base() -> BaseImage:
    return asyncio.run(ensure_base_image("python3.11"))


async def test_sandbox_is_confined(base: BaseImage, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    lines: list[str] = []

    async def log(text: str) -> None:
        lines.append(text)

    mounts = [Mount(out, "/opt/morty/deps", readonly=False)]
    script = PROBE.replace("/out/", "/opt/morty/deps/")
    await Sandbox(base).run(tmp_path / "work", ["/usr/bin/python3", "-c", script], log, mounts=mounts)
    output = "".join(lines)
    assert f"uid {NOBODY}" in output
    assert "denied /usr/probe" in output
    assert "wrote /opt/morty/deps/probe" in output
    assert (out / "probe").read_text() == "x"


async def test_sandbox_timeout(base: BaseImage, tmp_path: Path) -> None:
    sandbox = Sandbox(base, SandboxLimits(timeout_seconds=2))
    started = asyncio.get_running_loop().time()
    with pytest.raises(BuildError, match="timed out after 2 s"):
        await sandbox.run(tmp_path / "work", ["/usr/bin/python3", "-c", "import time; time.sleep(60)"], _discard)
    assert asyncio.get_running_loop().time() - started < 30
    # The container was killed and deleted: runc keeps no state for it.
    assert not [p.name for p in RUNC_ROOT.iterdir() if p.name.startswith("morty-build-")]


async def _discard(_text: str) -> None:
    pass
