"""Active health checks: a GET on each target of a service that has a `health_check`, at its interval.
A target fails after `unhealthy_threshold` failed checks in a row and comes back (also from a passive
ejection) after `healthy_threshold` good ones."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from time import monotonic
from typing import Any

from gateway.model import HealthCheckSpec
from gateway.proxy.config import Config, Target

log = logging.getLogger(__name__)
TICK_S = 0.05


class HealthChecker:
    def __init__(self, config: Config, spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self.config = config
        self.spawn = spawn

    async def run(self) -> None:
        while True:
            now = monotonic()
            for pool in self.config.pools.values():
                spec = pool.spec.health_check
                if spec is None:
                    continue
                for target in pool.members:
                    if not target.checking and target.next_check <= now and not target.draining:
                        target.checking = True
                        target.next_check = now + spec.interval_s
                        self.spawn(self.check(target, spec))
            await asyncio.sleep(TICK_S)

    async def check(self, target: Target, spec: HealthCheckSpec) -> None:
        try:
            ok = await asyncio.wait_for(self._probe(target, spec.path), spec.timeout_s)
        except (OSError, TimeoutError, ValueError):
            ok = False
        finally:
            target.checking = False
        if ok:
            target.check_fail = 0
            target.check_ok += 1
            if target.check_ok >= spec.healthy_threshold and (not target.healthy or target.ejected_until > monotonic()):
                target.healthy = True
                target.ejected_until = 0.0
                target.failures = 0
                log.info("target healthy again", extra={"target": target.key})
        else:
            target.check_ok = 0
            target.check_fail += 1
            if target.check_fail >= spec.unhealthy_threshold and target.healthy:
                target.healthy = False
                log.warning("target failed its health check", extra={"target": target.key})

    async def _probe(self, target: Target, path: str) -> bool:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {target.address}\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
            parts = line.split()
            return len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1][:1] in (b"2", b"3")
        finally:
            writer.close()
