"""Find and remove a container's cgroup directories (cgroup v1, hybrid or v2)."""

from __future__ import annotations

import contextlib
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _candidates(cgroups_path: str) -> list[Path]:
    relative = cgroups_path.strip("/")
    if not relative:
        return []
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # unified (v2) only
        return [CGROUP_ROOT / relative]
    return [h / relative for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink()]


def cgroup_dirs(cgroups_path: str) -> list[Path]:
    """Existing directories of `cgroups_path` in every mounted hierarchy."""
    return [c for c in _candidates(cgroups_path) if c.is_dir()]


def controller_file(cgroups_path: str, controller: str, name: str) -> Path:
    """Path of a control file, e.g. ("…", "memory", "memory.limit_in_bytes") on v1, "memory.max" on v2."""
    relative = cgroups_path.strip("/")
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return CGROUP_ROOT / relative / name
    return CGROUP_ROOT / controller / relative / name


def remove_cgroup(cgroups_path: str) -> None:
    """rmdir the cgroup (and its parent, when empty) in every hierarchy. Needs no process left in it."""
    for directory in _candidates(cgroups_path):
        if directory.is_dir():
            # Children first (runtimes may create sub-cgroups), then the directory itself.
            children = sorted((d for d in directory.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
            for child in [*children, directory]:
                with contextlib.suppress(OSError):
                    child.rmdir()
        # The driver's parent cgroup, once its last container is gone (fails harmlessly otherwise).
        with contextlib.suppress(OSError):
            directory.parent.rmdir()


def _cgroup_mounts(mounts_file: str) -> list[tuple[str, str, str, str]]:
    """(source, target, fstype, options) of the cgroup file systems (and the tmpfs holding them)."""
    found = []
    with open(mounts_file) as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 4 or not fields[1].startswith(str(CGROUP_ROOT)):
                continue
            if fields[2] in ("cgroup", "cgroup2") or (fields[2] == "tmpfs" and fields[1] == str(CGROUP_ROOT)):
                found.append((fields[0], fields[1], fields[2], fields[3]))
    return found


def missing_cgroup_mounts() -> list[tuple[str, str, str, str]]:
    """The cgroup mounts to recreate in this process's mount namespace; empty when cgroups are visible.

    `ip netns exec` (how a riklet standing for a second host is started) mounts a fresh /sys for
    the namespace, which hides /sys/fs/cgroup, and runc then fails with "no cgroup mount found".
    Mounting the same hierarchies again (same controllers → same hierarchy) in the riklet's private
    mount namespace restores them; the host's mounts are not touched.
    """
    if any(m[2] in ("cgroup", "cgroup2") for m in _cgroup_mounts("/proc/self/mounts")):
        return []
    try:
        wanted = _cgroup_mounts("/proc/1/mounts")
    except OSError:
        wanted = []
    return wanted or [("cgroup2", str(CGROUP_ROOT), "cgroup2", "rw,nosuid,nodev,noexec")]
