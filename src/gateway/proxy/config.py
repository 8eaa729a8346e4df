"""The worker's live configuration: routes, upstream pools and targets as plain slotted objects,
updated in place from the management process's change stream (no copy of the table per change)."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from gateway.model import RouteSpec, ServiceSpec, TargetSpec, parse_address
from gateway.proxy.auth import Authenticator, make_authenticator
from gateway.proxy.clock import CLOCK
from gateway.proxy.limits import TokenBucket

if TYPE_CHECKING:
    from gateway.proxy.protocol import Exchange
    from gateway.proxy.upstream import UpstreamConnection

log = logging.getLogger(__name__)
MAX_IDLE_PER_TARGET = 512


class Target:
    __slots__ = (
        "address",
        "check_fail",
        "check_ok",
        "checking",
        "conns",
        "cw",
        "draining",
        "ejected_until",
        "failures",
        "fresh_start",
        "healthy",
        "host",
        "idle",
        "in_flight",
        "key",
        "labels",
        "next_check",
        "port",
        "service",
        "weight",
    )

    def __init__(self, service: str, spec: TargetSpec) -> None:
        self.service = service
        self.address = spec.address
        self.key = f"{service}/{spec.address}"
        self.host, self.port = parse_address(spec.address)
        self.weight = spec.weight
        self.labels = spec.labels
        self.in_flight = 0
        self.idle: list[UpstreamConnection] = []
        self.conns: set[UpstreamConnection] = set()
        self.failures = 0
        self.ejected_until = 0.0
        self.healthy = True
        self.cw = 0
        self.draining = False
        # The value of label `start_path` for the first request a freshly provisioned target serves.
        self.fresh_start: str | None = None
        # Active health check state.
        self.next_check = 0.0
        self.check_ok = 0
        self.check_fail = 0
        self.checking = False

    def usable(self, now: float) -> bool:
        return self.healthy and not self.draining and self.ejected_until <= now

    def drain(self) -> None:
        """No new requests; idle connections close now, busy ones when their request finishes."""
        self.draining = True
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()


class Pool:
    """An upstream service: its targets and how one is chosen."""

    __slots__ = (
        "active_check",
        "connect_timeout",
        "eject_s",
        "labels",
        "least",
        "max_failures",
        "members",
        "name",
        "read_timeout",
        "retries",
        "spec",
        "targets",
    )

    def __init__(self, name: str, spec: ServiceSpec) -> None:
        self.name = name
        self.targets: dict[str, Target] = {}
        self.members: tuple[Target, ...] = ()
        self.update(spec)

    def update(self, spec: ServiceSpec) -> None:
        self.spec = spec
        self.least = spec.policy == "least_in_flight"
        self.retries = spec.retries
        self.connect_timeout = spec.connect_timeout_s
        self.read_timeout = spec.read_timeout_s
        self.max_failures = spec.passive.max_failures
        self.eject_s = spec.passive.eject_s
        self.active_check = spec.health_check is not None
        self.labels = spec.labels

    def add(self, target: Target) -> None:
        self.targets[target.address] = target
        self.members = tuple(self.targets.values())

    def remove(self, address: str) -> Target | None:
        target = self.targets.pop(address, None)
        self.members = tuple(self.targets.values())
        return target

    def pick(self, exclude: tuple[Target, ...] = ()) -> Target | None:
        """Smooth weighted round-robin (nginx's) or least in-flight per weight, over usable targets."""
        now = CLOCK.now
        best: Target | None = None
        if self.least:
            best_load = math.inf
            for target in self.members:
                if target.usable(now) and target not in exclude:
                    load = target.in_flight / target.weight
                    if load < best_load:
                        best, best_load = target, load
            return best
        total = 0
        for target in self.members:
            if target.usable(now) and target not in exclude:
                target.cw += target.weight
                total += target.weight
                if best is None or target.cw > best.cw:
                    best = target
        if best is not None:
            best.cw -= total
        return best

    def has_usable(self) -> bool:
        now = monotonic()
        return any(target.usable(now) for target in self.members)

    def report_failure(self, target: Target) -> None:
        target.failures += 1
        if target.failures >= self.max_failures and target.ejected_until <= monotonic():
            # With an active check the target stays out until that check passes again.
            target.ejected_until = math.inf if self.active_check else monotonic() + self.eject_s
            log.warning("target ejected", extra={"target": target.key, "failures": target.failures})

    def report_success(self, target: Target) -> None:
        target.failures = 0


class Route:
    __slots__ = (
        "auth",
        "connect_timeout",
        "held",
        "hosts",
        "in_flight",
        "labels",
        "limiter",
        "max_body",
        "max_concurrency",
        "methods",
        "name",
        "prefix",
        "priority",
        "provisioner",
        "provisioning",
        "queue_size",
        "read_timeout",
        "retry_after",
        "service",
        "strip_prefix",
        "wildcards",
    )

    def __init__(self, name: str, spec: RouteSpec, workers: int) -> None:
        self.name = name
        self.in_flight = 0
        self.held: deque[Exchange] = deque()
        self.provisioning = False
        self.update(spec, workers)

    def update(self, spec: RouteSpec, workers: int) -> None:
        self.service = spec.service
        self.hosts = frozenset(host.encode() for host in spec.hosts if not host.startswith("*."))
        self.wildcards = tuple(host[1:].encode() for host in spec.hosts if host.startswith("*."))
        self.prefix = spec.path_prefix.encode()
        self.methods = frozenset(method.encode() for method in spec.methods) or None
        self.priority = spec.priority
        self.strip_prefix = spec.strip_prefix
        self.connect_timeout = spec.connect_timeout_s
        self.read_timeout = spec.read_timeout_s
        self.max_body = spec.max_body_bytes
        self.auth: Authenticator | None = make_authenticator(spec.auth)
        # Limits are per worker: each worker gets its share of the route's rate and concurrency.
        self.limiter = (
            TokenBucket(spec.rate_limit.rate_per_s / workers, max(1, spec.rate_limit.burst // workers))
            if spec.rate_limit
            else None
        )
        self.max_concurrency = -(-spec.max_concurrency // workers) if spec.max_concurrency else None
        self.provisioner = spec.provisioner
        self.queue_size = spec.provisioner.queue_size if spec.provisioner else 0
        self.retry_after = b"%d" % (spec.provisioner.retry_after_s if spec.provisioner else 5)
        self.labels = spec.labels

    def matches(self, host: bytes, path: bytes, method: bytes) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if (self.hosts or self.wildcards) and host not in self.hosts and not host.endswith(self.wildcards or (b"\0",)):
            return False
        prefix = self.prefix
        if not path.startswith(prefix):
            return False
        # Prefixes match whole segments: /fn/hello matches /fn/hello and /fn/hello/x, not /fn/hello2.
        return len(path) == len(prefix) or prefix.endswith(b"/") or path[len(prefix)] == 47


class Config:
    """Routes and pools of one worker, applied change by change from the management stream."""

    def __init__(self, workers: int, on_target_added: Callable[[Pool, Target], None]) -> None:
        self.workers = workers
        self.routes: dict[str, Route] = {}
        self.ordered: tuple[Route, ...] = ()
        # Candidates by the first path segment: a prefix other than "/" only matches paths that share
        # its first segment, so a request scans its segment's routes (plus the "/" ones), not all routes.
        self.by_segment: dict[bytes, tuple[Route, ...]] = {}
        self.roots: tuple[Route, ...] = ()
        self.pools: dict[str, Pool] = {}
        self.resource_version = 0
        self._on_target_added = on_target_added

    def match(self, host: bytes, path: bytes, method: bytes) -> Route | None:
        end = path.find(b"/", 1)
        candidates = self.by_segment.get(path[1:] if end < 0 else path[1:end], self.roots)
        for route in candidates:
            if route.matches(host, path, method):
                return route
        return None

    def apply(self, event: dict[str, Any]) -> None:
        kind, name, spec = event["kind"], event["name"], event.get("spec")
        if event["type"] == "put":
            assert spec is not None
            if kind == "service":
                self._put_service(name, ServiceSpec.model_validate(spec))
            elif kind == "target":
                self._put_target(name.partition("/")[0], TargetSpec.model_validate(spec))
            elif kind == "route":
                self._put_route(name, RouteSpec.model_validate(spec))
        elif kind == "service":
            pool = self.pools.pop(name, None)
            for target in pool.members if pool else ():
                target.drain()
        elif kind == "target":
            service, _, address = name.partition("/")
            pool = self.pools.get(service)
            removed = pool.remove(address) if pool else None
            if removed is not None:
                removed.drain()
        elif kind == "route":
            route = self.routes.pop(name, None)
            self._reorder()
            if route is not None:
                while route.held:
                    route.held.popleft().reject_held(404, "route was deleted")
        self.resource_version = max(self.resource_version, int(event["resource_version"]))

    def replace(self, events: list[dict[str, Any]], resource_version: int) -> None:
        """Bring the configuration to a snapshot (after a reconnect that could not resume): objects in
        the snapshot are put (unchanged ones keep their connections), the others are deleted."""
        present = {(event["kind"], event["name"]) for event in events}
        for event in events:
            self.apply(event)
        for name in [name for name in self.routes if ("route", name) not in present]:
            self.apply({"type": "delete", "kind": "route", "name": name, "resource_version": 0})
        for pool in list(self.pools.values()):
            for address in [a for a in pool.targets if ("target", f"{pool.name}/{a}") not in present]:
                self.apply(
                    {"type": "delete", "kind": "target", "name": f"{pool.name}/{address}", "resource_version": 0}
                )
        for name in [name for name in self.pools if ("service", name) not in present]:
            self.apply({"type": "delete", "kind": "service", "name": name, "resource_version": 0})
        self.resource_version = resource_version

    def _put_service(self, name: str, spec: ServiceSpec) -> None:
        pool = self.pools.get(name)
        if pool is None:
            self.pools[name] = Pool(name, spec)
        else:
            pool.update(spec)

    def _put_target(self, service: str, spec: TargetSpec) -> None:
        pool = self.pools.get(service)
        if pool is None:
            log.warning("target for an unknown service", extra={"service": service, "address": spec.address})
            return
        target = pool.targets.get(spec.address)
        if target is not None and not target.draining:
            target.weight, target.labels = spec.weight, spec.labels
            return
        target = Target(service, spec)
        pool.add(target)
        self._on_target_added(pool, target)

    def _put_route(self, name: str, spec: RouteSpec) -> None:
        route = self.routes.get(name)
        if route is None:
            self.routes[name] = Route(name, spec, self.workers)
        else:
            route.update(spec, self.workers)
        self._reorder()

    def _reorder(self) -> None:
        self.ordered = tuple(sorted(self.routes.values(), key=lambda r: (-r.priority, -len(r.prefix), r.name)))
        segments: dict[bytes, list[Route]] = {}
        roots: list[Route] = []
        for route in self.ordered:
            if route.prefix == b"/":
                roots.append(route)
                for members in segments.values():
                    members.append(route)
            else:
                end = route.prefix.find(b"/", 1)
                segment = route.prefix[1:] if end < 0 else route.prefix[1:end]
                # A new segment starts with the "/" routes already seen (they rank before it).
                segments.setdefault(segment, list(roots)).append(route)
        self.by_segment = {segment: tuple(members) for segment, members in segments.items()}
        self.roots = tuple(roots)
