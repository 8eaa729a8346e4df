"""The gateway's data plane against nginx, in front of the same upstream, in the same run.

Upstream: nginx `return 200` on its own port. Reference: nginx as a reverse proxy (`proxy_pass` with an
upstream `keepalive` pool). Gateway: `gateway --workers 1` with one route to the same upstream. Load: wrk.
As in shared/notes/gateway-measured-here.md, wrk and the upstream share CPU 0 and the proxy under test
gets CPU 1 alone (taskset), one worker each.

Figures:
- throughput and p50/p99 through each proxy, in alternating pairs; the ratio gateway / nginx per pair and
  its median (target >= 0.85);
- added latency at p50 with one connection: through the gateway minus straight to the upstream (target
  <= 0.3 ms);
- throughput while the management API applies 100 route changes a second, against runs without changes,
  alternating (target: no errors, <= 5 % drop);
- optionally (`--all-cores`) one pair with two workers each and no pinning.

    uv run python -m bench.gateway_proxy [--rounds 3] [--duration 8] [--connections 64] [--all-cores]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from bench._harness import cpu_seconds, free_port, report, stop, wait_http

TOKEN = "bench-token"
PROXY_CPU = "1"
LOAD_CPU = "0"


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us: float = 0.0  # CPU time of the proxy's worker processes per request


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in out.split()]


def measured(url: str, pids: list[int], *, duration: int, connections: int, pin: bool = True) -> WrkResult:
    """A wrk run plus the CPU the proxy's workers spent per request: a figure that, unlike req/s,
    does not move much when other work on the machine steals cycles."""
    before = cpu_seconds(pids)
    result = wrk(url, duration=duration, connections=connections, pin=pin)
    result.cpu_us = (cpu_seconds(pids) - before) / max(1, result.requests) * 1e6
    return result


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, *, duration: int, connections: int, pin: bool = True) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if pin:
        argv = ["taskset", "-c", LOAD_CPU, *argv]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors += sum(int(group) for group in match.groups())
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    return WrkResult(rps, p50, p99, errors, total)


NGINX_UPSTREAM = """
worker_processes 1;
daemon off;
pid {dir}/upstream.pid;
error_log {dir}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/ub; proxy_temp_path {dir}/up; fastcgi_temp_path {dir}/uf;
  uwsgi_temp_path {dir}/uu; scgi_temp_path {dir}/us;
  keepalive_requests 100000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""

NGINX_PROXY = """
worker_processes {workers};
daemon off;
pid {dir}/proxy.pid;
error_log {dir}/proxy-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/pb; proxy_temp_path {dir}/pp; fastcgi_temp_path {dir}/pf;
  uwsgi_temp_path {dir}/pu; scgi_temp_path {dir}/ps;
  keepalive_requests 100000;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""


@contextmanager
def process(
    argv: list[str], log: Path, url: str, *, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        wait_http(url, 60, proc)
        yield proc
    finally:
        stop(proc, 40)


@contextmanager
def nginx(config: str, name: str, workdir: Path, url: str, *, pin: str | None) -> Iterator[list[int]]:
    path = workdir / f"{name}.conf"
    path.write_text(config)
    argv = ["nginx", "-c", str(path), "-p", str(workdir)]
    if pin:
        argv = ["taskset", "-c", pin, *argv]
    with process(argv, workdir / f"{name}.log", url) as master:
        yield children(master.pid)


@contextmanager
def gateway(workdir: Path, upstream: int, *, workers: int, pin: str | None) -> Iterator[tuple[str, str, list[int]]]:
    port, admin_port = free_port(), free_port()
    database = workdir / f"gateway-{port}.db"
    argv = [sys.executable, "-m", "gateway", "--listen", f"127.0.0.1:{port}", "--admin-listen"]
    argv += [f"127.0.0.1:{admin_port}", "--workers", str(workers), "--database", f"sqlite:///{database}"]
    argv += ["--shutdown-grace", "5", "--log-level", "WARNING"]
    admin = f"http://127.0.0.1:{admin_port}"
    env = {**os.environ, "GATEWAY_TOKEN": TOKEN}
    with process(argv, workdir / f"gateway-{port}.log", f"{admin}/readyz", env=env) as management:
        with httpx.Client(base_url=admin, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as client:
            client.put("/v1/services/bench", json={}).raise_for_status()
            client.post("/v1/services/bench/targets", json={"address": f"127.0.0.1:{upstream}"}).raise_for_status()
            client.put("/v1/routes/bench", json={"service": "bench", "path_prefix": "/"}).raise_for_status()
            client.get("/v1/sync", params={"timeout_s": 30}).raise_for_status()
            if pin:
                # The worker gets the proxy's core; the management process (control plane, idle unless
                # routes change) runs with the load generator, as nginx's master process would idle.
                for worker in client.get("/v1/stats").json()["workers"]:
                    subprocess.run(["taskset", "-p", "-c", pin, str(worker["pid"])], check=True, capture_output=True)
                subprocess.run(["taskset", "-p", "-c", LOAD_CPU, str(management.pid)], check=True, capture_output=True)
            pids = [int(worker["pid"]) for worker in client.get("/v1/stats").json()["workers"]]
        yield f"http://127.0.0.1:{port}/", admin, pids


class RouteChurn:
    """Applies `rate` route changes a second through the management API in a thread."""

    def __init__(self, admin: str, rate: int, threads: int = 4) -> None:
        self.admin, self.rate, self.threads = admin, rate, threads
        self.applied = 0
        self.failed = 0
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> RouteChurn:
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.elapsed = time.monotonic() - self._started

    def _run(self, offset: int) -> None:
        """One of `threads` clients, each sending its share of the rate (a change takes a few ms). The
        stdlib's HTTP client on a kept-alive connection: the load generator's CPU, like wrk's, should be
        a small part of the two cores it shares with the gateway (httpx costs several times more)."""
        interval = self.threads / self.rate
        next_at = time.monotonic() + offset * interval / self.threads
        url = urlsplit(self.admin)
        connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
        index = offset
        try:
            while not self._stop.is_set():
                spec = {"service": "bench", "path_prefix": f"/churn/{index % 50}/{index}", "priority": index % 7}
                started = time.monotonic()
                try:
                    connection.request("PUT", f"/v1/routes/churn-{index % 50}", json.dumps(spec), headers)
                    response = connection.getresponse()
                    response.read()
                    if response.status not in (200, 201):
                        raise http.client.HTTPException(f"status {response.status}")
                    self.applied += 1
                    self.latencies.append(time.monotonic() - started)
                except (OSError, http.client.HTTPException):
                    self.failed += 1
                    connection.close()
                index += self.threads
                next_at += interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--all-cores", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk") or not shutil.which("nginx"):
        raise SystemExit("needs wrk and nginx (apt-get install wrk nginx-light)")
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    up_port, ngx_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/"
    ngx_url = f"http://127.0.0.1:{ngx_port}/"
    pairs: list[tuple[WrkResult, WrkResult]] = []
    try:
        with (
            nginx(NGINX_UPSTREAM.format(dir=workdir, port=up_port), "upstream", workdir, upstream_url, pin=LOAD_CPU),
            nginx(
                NGINX_PROXY.format(dir=workdir, port=ngx_port, upstream=up_port, workers=1),
                "proxy",
                workdir,
                ngx_url,
                pin=PROXY_CPU,
            ) as ngx_pids,
            gateway(workdir, up_port, workers=1, pin=PROXY_CPU) as (gw_url, admin, gw_pids),
        ):
            # Warm both (connection pools, caches).
            wrk(ngx_url, duration=2, connections=args.connections)
            wrk(gw_url, duration=2, connections=args.connections)
            for round_index in range(args.rounds):
                if round_index % 2 == 0:
                    ngx = measured(ngx_url, ngx_pids, duration=args.duration, connections=args.connections)
                    gwr = measured(gw_url, gw_pids, duration=args.duration, connections=args.connections)
                else:
                    gwr = measured(gw_url, gw_pids, duration=args.duration, connections=args.connections)
                    ngx = measured(ngx_url, ngx_pids, duration=args.duration, connections=args.connections)
                pairs.append((ngx, gwr))
                print(
                    f"round {round_index + 1}: nginx {ngx.rps:,.0f} req/s p50 {ngx.p50_ms:.2f} p99 {ngx.p99_ms:.2f} | "
                    f"gateway {gwr.rps:,.0f} req/s p50 {gwr.p50_ms:.2f} p99 {gwr.p99_ms:.2f} | "
                    f"ratio {gwr.rps / ngx.rps:.2f} | CPU/request {ngx.cpu_us:.0f}/{gwr.cpu_us:.0f} us | "
                    f"errors {ngx.errors}/{gwr.errors}",
                    flush=True,
                )
            # Added latency with one connection: through the gateway versus straight to the upstream.
            added = []
            for _ in range(args.rounds):
                direct = wrk(upstream_url, duration=4, connections=1)
                through = wrk(gw_url, duration=4, connections=1)
                added.append(through.p50_ms - direct.p50_ms)
            # Throughput under 100 route changes a second, alternating with quiet runs.
            quiet_runs, churn_runs, churn_errors, churn_applied, churn_failed = [], [], 0, 0, 0
            churn_seconds = 0.0
            quiet_cpu: list[float] = []
            churn_cpu: list[float] = []
            change_latencies: list[float] = []
            for _ in range(args.rounds):
                calm = measured(gw_url, gw_pids, duration=args.duration, connections=args.connections)
                quiet_runs.append(calm.rps)
                quiet_cpu.append(calm.cpu_us)
                with RouteChurn(admin, 100) as churn:
                    result = measured(gw_url, gw_pids, duration=args.duration, connections=args.connections)
                churn_cpu.append(result.cpu_us)
                churn_runs.append(result.rps)
                churn_errors += result.errors
                churn_applied += churn.applied
                churn_failed += churn.failed
                churn_seconds += churn.elapsed
                change_latencies += churn.latencies
                print(
                    f"churn: quiet {quiet_runs[-1]:,.0f} req/s, with {churn.applied / churn.elapsed:.0f} changes/s "
                    f"{result.rps:,.0f} req/s, errors {result.errors}",
                    flush=True,
                )
        all_cores = None
        if args.all_cores:
            ngx2_port = free_port()
            ngx2_url = f"http://127.0.0.1:{ngx2_port}/"
            with (
                nginx(NGINX_UPSTREAM.format(dir=workdir, port=up_port), "upstream", workdir, upstream_url, pin=None),
                nginx(
                    NGINX_PROXY.format(dir=workdir, port=ngx2_port, upstream=up_port, workers=2),
                    "proxy2",
                    workdir,
                    ngx2_url,
                    pin=None,
                ),
                gateway(workdir, up_port, workers=2, pin=None) as (gw2_url, _, _),
            ):
                ngx_all = wrk(ngx2_url, duration=args.duration, connections=args.connections, pin=False)
                gw_all = wrk(gw2_url, duration=args.duration, connections=args.connections, pin=False)
                all_cores = (ngx_all, gw_all)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ratios = [g.rps / n.rps for n, g in pairs]
    cpu_ratios = [n.cpu_us / g.cpu_us for n, g in pairs if g.cpu_us > 0]
    ngx_rps = statistics.median(n.rps for n, _ in pairs)
    gw_rps = statistics.median(g.rps for _, g in pairs)
    quiet, churned = statistics.median(quiet_runs), statistics.median(churn_runs)
    drop = (quiet - churned) / quiet
    churn_rate = churn_applied / churn_seconds
    rows = [
        ("nginx proxy_pass: req/s, p50/p99", f"{ngx_rps:,.0f}  {_median_p(pairs, 0)}"),
        ("gateway: req/s, p50/p99", f"{gw_rps:,.0f}  {_median_p(pairs, 1)}"),
        ("ratio gateway / nginx (median of pairs)", f"{statistics.median(ratios):.2f}  (pairs {_span(ratios)})"),
        (
            "CPU per request nginx / gateway (median)",
            f"{statistics.median(n.cpu_us for n, _ in pairs):.0f} / "
            f"{statistics.median(g.cpu_us for _, g in pairs):.0f} us"
            f"  (efficiency ratio {statistics.median(cpu_ratios):.2f}, pairs {_span(cpu_ratios)})",
        ),
        ("added latency at p50, 1 connection", f"{statistics.median(added):.3f} ms  (runs {_span(added)})"),
        ("route changes applied / failed", f"{churn_applied} / {churn_failed}"),
        ("route change latency p50", f"{statistics.median(change_latencies) * 1000:.1f} ms"),
        (
            f"throughput quiet / with {churn_rate:.0f} changes/s",
            f"{quiet:,.0f} / {churned:,.0f}  (drop {drop * 100:.1f} %)",
        ),
        ("errors during changes", str(churn_errors)),
        (
            "worker CPU per request quiet / during changes",
            f"{statistics.median(quiet_cpu):.0f} / {statistics.median(churn_cpu):.0f} us",
        ),
    ]
    figures = {
        "nginx_rps": ngx_rps,
        "gateway_rps": gw_rps,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "cpu_us_per_request": {
            "nginx": statistics.median(n.cpu_us for n, _ in pairs),
            "gateway": statistics.median(g.cpu_us for _, g in pairs),
        },
        "cpu_efficiency_ratio": statistics.median(cpu_ratios),
        "nginx_p50_ms": statistics.median(n.p50_ms for n, _ in pairs),
        "nginx_p99_ms": statistics.median(n.p99_ms for n, _ in pairs),
        "gateway_p50_ms": statistics.median(g.p50_ms for _, g in pairs),
        "gateway_p99_ms": statistics.median(g.p99_ms for _, g in pairs),
        "added_p50_ms": statistics.median(added),
        "added_p50_runs_ms": added,
        "quiet_rps": quiet,
        "churn_rps": churned,
        "churn_drop": drop,
        "churn_errors": churn_errors,
        "worker_cpu_us_quiet": statistics.median(quiet_cpu),
        "worker_cpu_us_churn": statistics.median(churn_cpu),
        "changes_applied": churn_applied,
        "changes_per_s": churn_rate,
    }
    if all_cores is not None:
        ngx_all, gw_all = all_cores
        rows.append(("all cores, 2 workers each: nginx / gateway", f"{ngx_all.rps:,.0f} / {gw_all.rps:,.0f}"))
        figures["all_cores"] = {"nginx_rps": ngx_all.rps, "gateway_rps": gw_all.rps}
    report("gateway vs nginx reverse proxy, one worker each", rows, figures)


def _median_p(pairs: list[tuple[WrkResult, WrkResult]], side: int) -> str:
    p50 = statistics.median(pair[side].p50_ms for pair in pairs)
    p99 = statistics.median(pair[side].p99_ms for pair in pairs)
    return f"{p50:.2f} / {p99:.2f} ms"


def _span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


if __name__ == "__main__":
    main()
