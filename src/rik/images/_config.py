"""The parts of an OCI image configuration that decide how a container runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageConfig:
    """`Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User` and `ExposedPorts` of an image.

    `env` keeps the image's order; `exposed_ports` holds `(port, protocol)` pairs.
    """

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    user: str = ""
    exposed_ports: list[tuple[int, str]] = field(default_factory=list)

    @classmethod
    def from_oci(cls, document: dict[str, Any]) -> ImageConfig:
        """Read an OCI image config blob (`application/vnd.oci.image.config.v1+json`)."""
        config: dict[str, Any] = document.get("config") or {}
        env: dict[str, str] = {}
        for item in config.get("Env") or []:
            name, _, value = str(item).partition("=")
            env[name] = value
        ports: list[tuple[int, str]] = []
        for key in config.get("ExposedPorts") or {}:
            number, _, protocol = str(key).partition("/")
            if number.isdigit():
                ports.append((int(number), protocol or "tcp"))
        return cls(
            entrypoint=[str(a) for a in config.get("Entrypoint") or []],
            cmd=[str(a) for a in config.get("Cmd") or []],
            env=env,
            working_dir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
            exposed_ports=ports,
        )
