"""The per-instance configuration disk (/dev/vdb): a tar holding `config.sh`, which the guest init sources.

Every value is quoted with `shlex.quote` (POSIX single quotes, which busybox sh honours), so arguments
and environment values reach the guest byte for byte. Changing env never rebuilds the root disk.
"""

from __future__ import annotations

import io
import shlex
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class GuestConfig:
    hostname: str
    argv: list[str]
    env: list[str]
    working_dir: str
    address: str
    prefixlen: int
    gateway: str


def config_script(config: GuestConfig) -> str:
    q = shlex.quote
    lines = [
        "# written by the riklet: the instance's identity, network and process",
        f"RIK_HOSTNAME={q(config.hostname)}",
        f"RIK_ADDRESS={q(config.address)}",
        f"RIK_PREFIX={q(str(config.prefixlen))}",
        f"RIK_GATEWAY={q(config.gateway)}",
        f"RIK_WORKDIR={q(config.working_dir or '/')}",
        # `env -i` arguments: the environment, then the command line.
        "set -- " + " ".join(q(word) for word in [*config.env, *config.argv]),
        "",
    ]
    return "\n".join(lines)


def config_disk(config: GuestConfig) -> bytes:
    """The raw disk image: an uncompressed tar (a multiple of 512 bytes, as a block device needs)."""
    data = config_script(config).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("config.sh")
        info.size, info.mode, info.mtime = len(data), 0o600, 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
