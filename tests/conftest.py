"""Fixtures shared by all tests. Keep this file small: helpers live in tests/support/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.registry import pid_alive, start_registry, stop_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local OCI registry (scripts/registry) for the session; yields ``127.0.0.1:PORT``.

    Plain HTTP: push with ``--dest-tls-verify=false``, pull with ``--tls-verify=false``.
    """
    running = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield running.address
    finally:
        stop_registry(running)
        assert not pid_alive(running.pid), f"registry pid {running.pid} survived stop"
