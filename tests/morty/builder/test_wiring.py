"""Morty APIs attach the builder only when a registry is configured."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from morty.api.app import create_app
from morty.api.builds import NoBuilderQueue
from morty.api.settings import Settings
from morty.builder.queue import Builder


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return dataclasses.replace(
        Settings(), data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'morty.db'}", token="t" * 20,
        **overrides,  # type: ignore[arg-type]
    )  # fmt: skip


def test_no_registry_no_builder(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path))
    assert isinstance(app.state.morty.build_queue, NoBuilderQueue)


def test_registry_attaches_the_builder(tmp_path: Path) -> None:
    app = create_app(_settings(tmp_path, registry="127.0.0.1:5000", build_concurrency=3))
    queue = app.state.morty.build_queue
    assert isinstance(queue, Builder)
    assert queue.settings.registry == "127.0.0.1:5000"
    assert queue.settings.concurrency == 3
    assert queue.settings.work_dir == tmp_path / "data" / "builds"


def test_settings_from_env() -> None:
    env = {"MORTY_REGISTRY": "10.0.0.1:5000", "MORTY_BUILD_CACHE": "/tmp/c", "MORTY_BUILD_CONCURRENCY": "4"}
    settings = Settings.from_env(env)
    assert (settings.registry, settings.build_cache_dir, settings.build_concurrency) == (
        "10.0.0.1:5000", Path("/tmp/c"), 4,
    )  # fmt: skip
    assert Settings.from_env({}).registry == ""
