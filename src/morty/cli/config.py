"""Where the CLI sends requests: contexts (a URL and a token each) in `~/.config/morty/config.yaml`
(`$MORTY_CONFIG`), the current one overridable by `--context`, and both fields by `$MORTY_URL`/`$MORTY_TOKEN`.

The URL is the API gateway's (management calls under `/v1` and invocations under `/fn` both go through it);
Morty APIs' own URL works too for management."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_URL = "http://127.0.0.1:8080"


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Context:
    name: str
    url: str
    token: str | None


def config_path() -> Path:
    return Path(os.environ.get("MORTY_CONFIG") or Path.home() / ".config" / "morty" / "config.yaml")


def load() -> dict[str, Any]:
    path = config_path()
    if not path.is_file():
        return {"contexts": {}, "current-context": None}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("contexts", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with `contexts`")
    data.setdefault("contexts", {})
    return data


def save(data: dict[str, Any]) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=True))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


def current(name: str | None = None) -> Context:
    data = load()
    chosen = name or data.get("current-context")
    entry: dict[str, Any] = {}
    if chosen:
        if chosen not in data["contexts"]:
            raise ConfigError(f"no context {chosen!r}; see `morty config get-contexts`")
        entry = data["contexts"][chosen] or {}
    url = os.environ.get("MORTY_URL") or entry.get("url") or DEFAULT_URL
    token = os.environ.get("MORTY_TOKEN") or entry.get("token")
    return Context(chosen or "(default)", str(url).rstrip("/"), token)
