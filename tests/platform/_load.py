"""Bounded load: a fixed number of requests at a fixed rate, spread over the gateway replicas, in a thread of
its own so the test can kill and wait without slowing it. Every request has a client timeout; an answer that
did not come within it is recorded as such, never waited for longer."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Outcome:
    at: float
    """time.monotonic() when the request was sent."""
    target: str
    status: int | None
    """None: no answer (`error` says why)."""
    error: str | None
    seconds: float


@dataclass
class Load:
    urls: list[str]
    rate: float
    duration: float
    timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def wait(self) -> list[Outcome]:
        assert self._thread is not None
        self._thread.join(self.duration + self.timeout + 30)
        assert not self._thread.is_alive(), "the load did not end"
        return sorted(self.outcomes, key=lambda o: o.at)

    async def _run(self) -> None:
        total = int(self.rate * self.duration)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        async with httpx.AsyncClient(timeout=self.timeout, trust_env=False, limits=limits) as client:
            start = time.monotonic()
            tasks = []
            for n in range(total):
                await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
                tasks.append(asyncio.create_task(self._one(client, self.urls[n % len(self.urls)])))
            await asyncio.gather(*tasks)

    async def _one(self, client: httpx.AsyncClient, url: str) -> None:
        at = time.monotonic()
        try:
            response = await client.get(url)
            outcome = Outcome(at, url, response.status_code, None, time.monotonic() - at)
        except httpx.TimeoutException as exc:
            outcome = Outcome(at, url, None, f"timeout: {exc!r}", time.monotonic() - at)
        except httpx.HTTPError as exc:
            outcome = Outcome(at, url, None, repr(exc), time.monotonic() - at)
        self.outcomes.append(outcome)


def between(outcomes: list[Outcome], start: float, end: float) -> list[Outcome]:
    return [o for o in outcomes if start <= o.at <= end]


def summary(outcomes: list[Outcome]) -> str:
    counts: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else (o.error or "?")[:80]
        counts[key] = counts.get(key, 0) + 1
    return f"{len(outcomes)} requests: {counts}"
