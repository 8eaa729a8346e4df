"""The registry of runtimes a function can use, with the image each function image builds on.

Image names are repositories in Morty's OCI registry, relative to it; the builder builds and pushes
them (shared/DESIGN.md §4). Adding a runtime is adding an entry here once its base image exists.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    language: str
    language_version: str
    image: str
    handler: str
    """The file of the function's code that the runtime loads and calls `handler(request)` in, as the
    runtime's template writes it (`MORTY_HANDLER` defaults to `main.handler`)."""


RUNTIMES: dict[str, RuntimeInfo] = {
    r.name: r
    for r in (
        RuntimeInfo("python3.11", "python", "3.11", "morty/runtime-python3.11:latest", "main.py"),
        RuntimeInfo("node18", "node", "18", "morty/runtime-node18:latest", "main.js"),
    )
}


def get_runtime(name: str) -> RuntimeInfo | None:
    return RUNTIMES.get(name)


def known() -> str:
    return ", ".join(sorted(RUNTIMES))
