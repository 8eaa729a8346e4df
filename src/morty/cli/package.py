"""A function's directory as the archive `morty deploy` uploads, and its `morty.yaml`."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import yaml

from morty.cli.client import CliError

SKIPPED_DIRS = {".git", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".pytest_cache"}
CONFIG_KEYS = {
    "memory": "memory_mib",
    "timeout": "timeout_seconds",
    "vcpus": "vcpus",
    "isolation": "isolation",
    "env": "env",
    "min_instances": "min_instances",
    "max_instances": "max_instances",
    "concurrency": "concurrency",
    "idle_timeout": "idle_timeout_seconds",
}


def read_config(directory: Path) -> dict[str, Any]:
    for name in ("morty.yaml", "morty.yml"):
        path = directory / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise CliError(f"{path} is not valid YAML: {exc}", 2) from None
            if not isinstance(data, dict):
                raise CliError(f"{path}: expected a mapping (name, runtime, ...)", 2)
            unknown = set(data) - set(CONFIG_KEYS) - {"name", "runtime", "handler", "version"}
            if unknown:
                raise CliError(f"{path}: unknown keys {sorted(unknown)}", 2)
            return data
    raise CliError(f"no morty.yaml in {directory}; create one with `morty init`", 2)


def function_config(config: dict[str, Any]) -> dict[str, Any]:
    """The function configuration fields of `morty.yaml`, as the API names them."""
    return {api: config[key] for key, api in CONFIG_KEYS.items() if key in config}


def zip_directory(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, dirs, files in os.walk(directory):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()
