"""Build a container's OCI runtime `config.json` from umoci's template, the image config and the spec.

Pure functions, no I/O: the command/env/cwd rules are unit-testable on their own.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from rik.drivers.process import DEFAULT_PATH, process_args, process_env

__all__ = ["DEFAULT_PATH", "Limits", "container_config", "probe_config", "process_args", "process_env"]

CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    cpu_millicores: int
    memory_mib: int
    pids: int

    def resources(self) -> dict[str, Any]:
        return {
            "cpu": {
                # shares are relative weights (1024 = one CPU); quota caps use at the requested amount.
                "shares": max(2, self.cpu_millicores * 1024 // 1000),
                "quota": max(1000, self.cpu_millicores * CPU_PERIOD_US // 1000),
                "period": CPU_PERIOD_US,
            },
            "memory": {"limit": self.memory_mib * 1024 * 1024},
            "pids": {"limit": self.pids},
        }


def container_config(
    template: dict[str, Any],
    *,
    args: list[str],
    env: list[str],
    cwd: str,
    hostname: str,
    rootfs: str,
    netns_path: str,
    cgroups_path: str,
    limits: Limits,
) -> dict[str, Any]:
    """A detached-run config: no terminal, the instance's netns, cgroup limits, absolute rootfs."""
    config = copy.deepcopy(template)
    process = config.setdefault("process", {})
    process["terminal"] = False
    process.pop("consoleSize", None)
    process["args"] = args
    process["env"] = env
    process["cwd"] = cwd or "/"
    config["hostname"] = hostname
    config["root"] = {"path": rootfs, "readonly": False}
    linux = config.setdefault("linux", {})
    namespaces = [ns for ns in linux.get("namespaces", []) if ns.get("type") != "network"]
    namespaces.append({"type": "network", "path": netns_path})
    if not any(ns.get("type") == "uts" for ns in namespaces):
        namespaces.append({"type": "uts"})
    linux["namespaces"] = namespaces
    linux["cgroupsPath"] = cgroups_path
    resources = linux.setdefault("resources", {})
    resources.update(limits.resources())
    return config


def probe_config(rootfs: str, mounts: list[dict[str, Any]], cgroups_path: str) -> dict[str, Any]:
    """A minimal config that runs `/bin/true`, used once to check that a runtime works here."""
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": [f"PATH={DEFAULT_PATH}"],
            "cwd": "/",
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "rik-probe",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, *mounts],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "cgroupsPath": cgroups_path,
            "resources": {"memory": {"limit": 32 * 1024 * 1024}, "pids": {"limit": 16}},
        },
    }
