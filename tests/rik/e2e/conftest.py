"""Fixtures of the end-to-end suite: the image every test runs (built with umoci, pushed to the session's
registry) and a `Cluster` per test that starts real controller and riklet processes and, on teardown,
kills what it started, removes what the riklets left and checks that the host is clean.

The harness itself lives in `_cluster.py`; `_scrub.py` is the riklet-independent cleanup.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.images import build_busybox_httpd_image, push_image

from . import _cluster
from ._cluster import Cluster

INDEX_HTML = "hello from a rik e2e pod\n"
TOOLS = ("runc", "skopeo", "umoci", "iptables", "iptables-save", "ip", "docker-registry")


def _require_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("end-to-end tests need root")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not Path("/bin/busybox").is_file():
        pytest.skip("busybox-static is not installed")


@pytest.fixture(scope="session", autouse=True)
def _bytecode_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Let the processes we start cache bytecode outside the source tree (see `_cluster.PYCACHE_PREFIX`)."""
    _cluster.PYCACHE_PREFIX = tmp_path_factory.getbasetemp() / "pycache"


@pytest.fixture(scope="session")
def e2e_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An OCI layout holding busybox httpd serving INDEX_HTML on port 8080 (`oci:` reference)."""
    _require_host()
    layout = tmp_path_factory.mktemp("e2e-image") / "layout"
    yield build_busybox_httpd_image(layout, "httpd", index_html=INDEX_HTML, port=8080)


@pytest.fixture(scope="session")
def image(e2e_image: str, registry: str) -> str:
    """The e2e image as pulled by riklets: `127.0.0.1:PORT/e2e/httpd:1` in the session's registry."""
    return push_image(e2e_image, registry, "e2e/httpd:1")


@pytest.fixture
async def cluster(tmp_path: Path, registry: str, image: str) -> AsyncIterator[Cluster]:
    _require_host()
    cluster = Cluster(tmp_path, registry)
    try:
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture(scope="module")
def controller_only(tmp_path_factory: pytest.TempPathFactory, registry: str) -> Iterator[Cluster]:
    """A controller with no riklet, shared by a module's tests (for input validation)."""
    _require_host()
    cluster = Cluster(tmp_path_factory.mktemp("controller-only"), registry)
    try:
        cluster.start_controller()
        yield cluster
    finally:
        asyncio.run(cluster.close())
