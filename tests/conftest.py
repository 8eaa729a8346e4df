"""Fixtures shared by all tests. Keep this file small: helpers live in tests/support/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import create_database, postgres_server
from tests.support.registry import pid_alive, start_registry, stop_registry


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--full", action="store_true", help="tests/platform in their long form (also PLATFORM_FULL=1)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """One PostgreSQL server for the session (``host:port``); tests create their own databases in it."""
    with postgres_server() as address:
        yield address


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for one test, on SQLite and again on PostgreSQL (an e2e test: it starts a server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    address: str = request.getfixturevalue("postgres")
    return create_database(address, f"test_{uuid.uuid4().hex[:12]}")


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
