"""Whether an instance serves: a TCP connect to its first declared port, which every driver uses as
"ready" (so a `Running` instance of any kind accepts connections when it is reported)."""

from __future__ import annotations

import asyncio
import contextlib

from rik.model import WorkloadSpec


def first_tcp_port(spec: WorkloadSpec) -> int | None:
    return next((p.port for p in spec.ports if p.protocol == "tcp"), None)


async def connects(ip: str, port: int, *, within: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(within):
            _, writer = await asyncio.open_connection(ip, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
