"""Kernel modules of the guest kernel: which are built in, where the others are, in which order to load them.

The order comes from each module's own `.modinfo` `depends=` field (what `depmod` reads), so provisioning
does not need kmod installed on the node; `depmod -b` is still run when present, for the guest's sake.
"""

from __future__ import annotations

import lzma
import re
from pathlib import Path

_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)")


class ModuleError(Exception):
    pass


def _module_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def depends(path: Path) -> list[str]:
    """The modules `path` depends on, from its `.modinfo` section."""
    match = _DEPENDS.search(read_module(path))
    if match is None or not match.group(1):
        return []
    return [name.decode().replace("-", "_") for name in match.group(1).split(b",") if name]


def load_order(modules_dir: Path, wanted: list[str]) -> list[tuple[str, Path]]:
    """`wanted` and their dependencies, dependencies first, as (name, file); built-in modules are skipped."""
    builtin: set[str] = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.is_file():
        builtin = {_module_name(Path(line.strip())) for line in builtin_list.read_text().splitlines() if line.strip()}
    files = {_module_name(p): p for p in modules_dir.rglob("*.ko*") if p.is_file()}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen or name in builtin:
            return
        if name in chain:
            raise ModuleError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = files.get(name)
        if path is None:
            raise ModuleError(f"kernel module {name} is neither built in nor in {modules_dir}")
        for dependency in depends(path):
            visit(dependency, (*chain, name))
        seen.add(name)
        order.append((name, path))

    for name in wanted:
        visit(name, ())
    return order
