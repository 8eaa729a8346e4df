"""HTTP checks against instances that may still be binding their port."""

from __future__ import annotations

import asyncio

import httpx


async def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """GET `url`, retrying until it answers or `timeout` passes; (0, error) if it never answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with httpx.AsyncClient(trust_env=False, timeout=2.0) as client:
        while True:
            try:
                response = await client.get(url)
                return response.status_code, response.text
            except httpx.TransportError as exc:
                if loop.time() > deadline:
                    return 0, repr(exc)
            await asyncio.sleep(0.05)
