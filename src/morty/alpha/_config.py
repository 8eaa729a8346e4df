"""alpha's configuration, read once from the environment (see the package docstring for every variable)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass


class ConfigError(ValueError):
    """An environment variable has a value alpha cannot use; the message names the variable."""


def default_runtime_command() -> list[str]:
    """The Python runtime shipped next to alpha (``<root>/runtimes/python/server.py``), run by this interpreter."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable or "python3", os.path.join(root, "runtimes", "python", "server.py")]


@dataclass(frozen=True, slots=True)
class Config:
    runtime_command: list[str]
    port: int = 8080
    ready_host: str = "127.0.0.1"
    ready_interval: float = 0.005
    control_host: str = "0.0.0.0"
    control_port: int = 8081
    log_file: str | None = None
    log_lines: int = 10_000
    echo: bool = True
    grace: float = 10.0
    max_restarts: int = 5
    restart_window: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Config:
        def number(name: str, default: float, minimum: float = 0.0) -> float:
            raw = env.get(name, "")
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a number") from None
            if value < minimum:
                raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
            return value

        def integer(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
            raw = env.get(name, "")
            if not raw:
                return default
            if not raw.strip().isdigit() or int(raw) < minimum or (maximum is not None and int(raw) > maximum):
                bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
                raise ConfigError(f"{name}={raw!r} must be an integer {bound}")
            return int(raw)

        command_text = env.get("MORTY_RUNTIME_CMD", "")
        try:
            command = shlex.split(command_text) if command_text.strip() else default_runtime_command()
        except ValueError as exc:
            raise ConfigError(f"MORTY_RUNTIME_CMD={command_text!r}: {exc}") from None
        return cls(
            runtime_command=command,
            port=integer("MORTY_PORT", 8080, 1, 65535),
            ready_host=env.get("MORTY_ALPHA_READY_HOST") or "127.0.0.1",
            ready_interval=number("MORTY_ALPHA_READY_INTERVAL", 0.005, 0.0005),
            control_host=env.get("MORTY_ALPHA_HOST") or "0.0.0.0",
            control_port=integer("MORTY_ALPHA_PORT", 8081, 1, 65535),
            log_file=env.get("MORTY_LOG_FILE") or None,
            log_lines=integer("MORTY_ALPHA_LOG_LINES", 10_000, 1),
            echo=env.get("MORTY_ALPHA_ECHO", "1") not in ("0", "false", "no", "off"),
            grace=number("MORTY_ALPHA_GRACE", 10.0),
            max_restarts=integer("MORTY_ALPHA_MAX_RESTARTS", 5, 1),
            restart_window=number("MORTY_ALPHA_RESTART_WINDOW", 60.0),
            backoff_initial=number("MORTY_ALPHA_BACKOFF", 0.1),
            backoff_max=number("MORTY_ALPHA_BACKOFF_MAX", 5.0),
        )
