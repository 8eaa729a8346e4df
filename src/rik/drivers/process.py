"""What an instance runs and sees, whatever the runtime: its command line, environment and resolver.

Pure functions shared by the drivers (containers and VMs follow the same rules).
"""

from __future__ import annotations

from pathlib import Path

from rik.images import ImageConfig
from rik.model import WorkloadSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def process_args(spec: WorkloadSpec, image: ImageConfig) -> list[str]:
    """The command line, with Kubernetes' rules (Docker's, for entrypoint/cmd):

    `command` replaces the image's Entrypoint and, when `args` is unset, also drops its Cmd; `args`
    replaces Cmd and keeps the Entrypoint.
    """
    if spec.command is not None:
        return [*spec.command, *(spec.args or [])]
    return [*image.entrypoint, *(spec.args if spec.args is not None else image.cmd)]


def process_env(spec: WorkloadSpec, image: ImageConfig, hostname: str) -> list[str]:
    """The image's environment, overridden by the spec's; PATH and HOSTNAME always set."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    env.update(image.env)
    env.update(spec.env)
    return [f"{name}={value}" for name, value in env.items()]


def resolv_conf(host_file: Path = Path("/etc/resolv.conf")) -> str:
    """An instance's /etc/resolv.conf: the host's, without loopback resolvers (unreachable from an
    instance, e.g. systemd-resolved's 127.0.0.53); with no resolver left, lookups fail fast."""
    lines: list[str] = []
    try:
        host = host_file.read_text().splitlines()
    except OSError:
        host = []
    for line in host:
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and (len(words) < 2 or words[1].startswith(("127.", "::1"))):
            continue
        lines.append(line.strip())
    if not any(line.startswith("nameserver") for line in lines):
        lines.append("options timeout:1 attempts:1")
    return "\n".join(lines) + "\n"
