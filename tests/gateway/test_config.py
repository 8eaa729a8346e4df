"""Route matching and target selection, without sockets."""

from __future__ import annotations

import random
from collections import Counter

from gateway.proxy.config import Config, Target
from gateway.proxy.limits import TokenBucket
from tests.gateway.helpers import event


def make_config() -> Config:
    config = Config(workers=1, on_target_added=lambda pool, target: None)
    config.apply(event("service", "svc", {}))
    return config


def naive_match(config: Config, host: bytes, path: bytes, method: bytes) -> str | None:
    for route in config.ordered:
        if route.matches(host, path, method):
            return route.name
    return None


def test_segment_index_agrees_with_a_full_scan() -> None:
    config = make_config()
    rng = random.Random(7)
    segments = ["fn", "api", "a", "fn2", "x"]
    for index in range(200):
        prefix = "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.2:
            prefix += "/"
        spec = {"service": "svc", "path_prefix": prefix, "priority": rng.randint(-2, 2)}
        if rng.random() < 0.2:
            spec["methods"] = ["POST"]
        config.apply(event("route", f"r{index}", spec))
    for _ in range(2000):
        path = "/" + "/".join(rng.choice([*segments, "zz", "fn@v1"]) for _ in range(rng.randint(0, 4)))
        method = rng.choice([b"GET", b"POST"])
        found = config.match(b"h", path.encode(), method)
        assert (found.name if found else None) == naive_match(config, b"h", path.encode(), method), path


def test_priority_then_longest_prefix() -> None:
    config = make_config()
    config.apply(event("route", "root", {"service": "svc", "path_prefix": "/"}))
    config.apply(event("route", "fn", {"service": "svc", "path_prefix": "/fn"}))
    config.apply(event("route", "hello", {"service": "svc", "path_prefix": "/fn/hello"}))
    config.apply(event("route", "urgent", {"service": "svc", "path_prefix": "/", "priority": 5, "hosts": ["x.io"]}))
    assert config.match(b"a.io", b"/fn/hello/1", b"GET").name == "hello"  # type: ignore[union-attr]
    assert config.match(b"a.io", b"/fn/other", b"GET").name == "fn"  # type: ignore[union-attr]
    assert config.match(b"a.io", b"/other", b"GET").name == "root"  # type: ignore[union-attr]
    assert config.match(b"x.io", b"/fn/hello", b"GET").name == "urgent"  # type: ignore[union-attr]
    config.apply(event("route", "root"))
    assert config.match(b"a.io", b"/other", b"GET") is None


def test_weighted_round_robin_is_smooth_and_proportional() -> None:
    config = make_config()
    config.apply(event("target", "svc/127.0.0.1:1", {"address": "127.0.0.1:1", "weight": 3}))
    config.apply(event("target", "svc/127.0.0.1:2", {"address": "127.0.0.1:2", "weight": 1}))
    pool = config.pools["svc"]
    picks = [pool.pick() for _ in range(8)]
    assert Counter(t.address for t in picks if t) == {"127.0.0.1:1": 6, "127.0.0.1:2": 2}
    # Smooth: the heavy target never gets more than 3 in a row.
    names = "".join("1" if t and t.address.endswith(":1") else "2" for t in picks)
    assert "1111" not in names


def test_least_in_flight_and_ejection() -> None:
    config = make_config()
    config.apply(event("service", "svc", {"policy": "least_in_flight", "passive": {"max_failures": 2}}))
    for port in (1, 2):
        config.apply(event("target", f"svc/127.0.0.1:{port}", {"address": f"127.0.0.1:{port}"}))
    pool = config.pools["svc"]
    first: Target = pool.targets["127.0.0.1:1"]
    first.in_flight = 5
    assert pool.pick().address == "127.0.0.1:2"  # type: ignore[union-attr]
    second = pool.targets["127.0.0.1:2"]
    pool.report_failure(second)
    pool.report_failure(second)
    assert pool.pick().address == "127.0.0.1:1"  # type: ignore[union-attr]
    config.apply(event("target", "svc/127.0.0.1:1"))
    assert first.draining and pool.pick() is None


def test_token_bucket() -> None:
    bucket = TokenBucket(rate_per_s=0.0001, burst=2)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
