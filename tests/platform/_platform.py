"""The whole platform on several "hosts" of one machine, configured as docs/multi-host.md deploys it.

Every host is a network namespace with its own address on one bridge (`172.31.N.0/24`, the root namespace
at `.1` standing for the database and registry host): two RIK controllers sharing one PostgreSQL database,
three riklets, Morty APIs (PostgreSQL, data directory on a small tmpfs), two gateway replicas sharing one
PostgreSQL database (Morty drives the first; the second follows the shared configuration). Riklets and
Morty APIs are given both controllers (`RIK_SERVER`, `MORTY_RIK_URL`), as a deployment with several
controllers does.

It extends the RIK end-to-end `Cluster`, which names everything after the test process, stops it all and
checks the host for leftovers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.rik.e2e._cluster import (
    Cluster,
    Controller,
    NetnsHost,
    Proc,
    Riklet,
    TcpForwarder,
    _free_octet,
    sh,
)
from tests.support.postgres import create_database, postgres_server

MORTY_TOKEN = "platform-token-0123456789"
GATEWAY_TOKEN = "platform-gateway-token-0123456789"
SECRET_KEY = base64.urlsafe_b64encode(b"p" * 32).decode()
LEASE_TTL = 4.0
NODE_TIMEOUT = 3.0
HEARTBEAT = 0.5
CONTROLLER_PORT, RIKLET_PORT, MORTY_PORT, GATEWAY_PORT, GATEWAY_ADMIN_PORT = 7700, 7701, 7800, 8080, 8081
STARTUP = 90.0
"""Seconds a service may take to answer its health check: the machine is shared, and Python starts slowly."""
VM_DISK_CACHE_MIB = 10
"""The riklets' VM root disk cache cap: one disk of the e2e busybox image (~7 MiB) fits, two do not, so the
leak check's VM cycles (a new disk each) exercise its eviction. No other test here runs VMs."""
DATA_DIR_SIZE = "768m"
"""Room for a build (it copies the runtime's base layout, ~250 MB, when the cache is on another file system)."""


@dataclass
class Service:
    """A platform process on a host, with the URL it serves its health check at."""

    proc: Proc
    host: NetnsHost
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.host.inner_ip


class MultiHostCluster(Cluster):
    """A `Cluster` whose hosts hang off one bridge, with several controllers on one PostgreSQL database."""

    def __init__(self, root: Path, registry: str) -> None:
        super().__init__(root, registry)
        addresses = sh("ip", "-4", "-o", "addr", "show")
        octet = _free_octet(lambda o: f" 172.31.{o}." in addresses, os.getpid() * 3 + self.seq * 5, 1, 250)
        self.prefix = f"172.31.{octet}"
        self.gateway_ip = f"{self.prefix}.1"
        self.bridge = f"rkb{self.tag}"
        self.links.append(self.bridge)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        self.extra_controllers: list[Controller] = []
        self._argv_by_url: dict[str, list[str]] = {}
        self.startup_timeout = STARTUP

    def controllers(self) -> list[Controller]:
        return super().controllers() + self.extra_controllers

    @property
    def url(self) -> str:
        """Every controller, comma-separated: the harness's own clients fail over as riklets do."""
        return ",".join(c.url for c in self.controllers())

    def add_bridged_host(self, role: str) -> NetnsHost:
        """A network namespace with its own address on the shared bridge (`<prefix>.<10 + index>`)."""
        index = len(self.hosts) + 1
        host = NetnsHost(
            name=f"rke-host-{self.tag}-{index}",
            outer=f"rkh{self.tag}{index}",
            inner=f"rki{self.tag}{index}",
            outer_ip=self.gateway_ip,
            inner_ip=f"{self.prefix}.{10 + index}",
        )
        self.hosts.append(host)
        sh("ip", "netns", "add", host.name)
        sh("ip", "link", "add", host.outer, "type", "veth", "peer", "name", host.inner, "netns", host.name)
        sh("ip", "link", "set", host.outer, "master", self.bridge, "up")
        for command in (f"addr add {host.inner_ip}/24 dev {host.inner}", f"link set {host.inner} up", "link set lo up"):
            sh("ip", "-n", host.name, *command.split())
        sh("ip", "-n", host.name, "route", "add", "default", "via", self.gateway_ip)
        (self.root / "hosts").mkdir(exist_ok=True)
        (self.root / "hosts" / host.name).write_text(role)
        return host

    def forward(self, target: str) -> str:
        """`target` (a loopback `host:port`) as the other hosts reach it, on the bridge address."""
        target_host, _, target_port = target.rpartition(":")
        forwarder = TcpForwarder(self.gateway_ip, target_host, int(target_port))
        self.forwarders.append(forwarder)
        return forwarder.start()

    def add_controller(self, database: str, node_timeout: float = NODE_TIMEOUT) -> Controller:
        host = self.add_bridged_host("controller")
        index = len(self.controllers()) + 1
        proc = Proc(f"controller c{index}", self.root / f"controller-c{index}.log")
        controller = Controller(proc, host.inner_ip, CONTROLLER_PORT, Path(database), node_timeout)
        if self.controller is None:
            self.controller = controller
        else:
            self.extra_controllers.append(controller)
        self._argv_by_url[controller.url] = [
            "ip", "netns", "exec", host.name, sys.executable, "-m", "rik.controller",
            "--listen", f"{controller.host}:{controller.port}",
            "--database", database,
            "--node-timeout", str(node_timeout),
            "--lease-ttl", str(LEASE_TTL),
            "--identity", f"platform-{self.tag}-c{index}",
            "--instance-cidr", self.instance_cidr,
        ]  # fmt: skip
        self.start_again(controller)
        return controller

    def start_again(self, controller: Controller) -> None:
        controller.proc.start(self._argv_by_url[controller.url])
        self._wait_http(f"{controller.url}/healthz", lambda body: True, controller.proc, f"{controller.proc.name} up")

    def leader(self) -> Controller | None:
        """The controller whose /healthz says it leads (None while none does)."""
        for controller in self.controllers():
            if not controller.proc.alive():
                continue
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if httpx.get(f"{controller.url}/healthz", timeout=2, trust_env=False).json().get("leader") is True:
                    return controller
        return None

    def add_worker(self, name: str, memory: int = 2048) -> Riklet:
        host = self.add_bridged_host(f"riklet {name}")
        options = ["--vm-disk-cache", str(VM_DISK_CACHE_MIB)]
        return self.start_riklet(name, netns=host, heartbeat=HEARTBEAT, memory=memory, options=options)

    def veth_of(self, riklet: Riklet) -> str:
        assert riklet.netns is not None
        return riklet.netns.outer


@dataclass
class Platform:
    cluster: MultiHostCluster
    database: str
    registry: str
    """The registry as every host reaches it (forwarded on the bridge address)."""
    morty: Service
    gateways: list[Service]
    data_dir: Path

    @property
    def morty_url(self) -> str:
        return f"http://{self.morty.address}:{MORTY_PORT}"

    def proxy_url(self, gateway: Service) -> str:
        return f"http://{gateway.address}:{GATEWAY_PORT}"

    def admin_url(self, gateway: Service) -> str:
        return f"http://{gateway.address}:{GATEWAY_ADMIN_PORT}"

    def api(self, timeout: float = 60) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {MORTY_TOKEN}"}
        return httpx.AsyncClient(base_url=self.morty_url, headers=headers, timeout=timeout, trust_env=False)

    def admin(self, gateway: Service) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {GATEWAY_TOKEN}"}
        return httpx.AsyncClient(base_url=self.admin_url(gateway), headers=headers, timeout=10, trust_env=False)

    def start(self, service: Service, health: str) -> None:
        service.proc.start(service.argv, service.env)
        self.cluster._wait_http(health, lambda body: True, service.proc, f"{service.proc.name} up")

    def start_morty(self) -> None:
        self.start(self.morty, f"{self.morty_url}/healthz")

    def start_gateway(self, gateway: Service) -> None:
        self.start(gateway, f"{self.admin_url(gateway)}/readyz")

    def kill(self, service: Service) -> None:
        service.proc.kill(signal.SIGKILL)


def _gateway(cluster: MultiHostCluster, index: int, database: str, sink: str) -> Service:
    host = cluster.add_bridged_host(f"gateway g{index}")
    argv = [
        "ip", "netns", "exec", host.name, sys.executable, "-m", "gateway",
        "--listen", f"{host.inner_ip}:{GATEWAY_PORT}", "--admin-listen", f"{host.inner_ip}:{GATEWAY_ADMIN_PORT}",
        "--workers", "1", "--database", database, "--sink", sink, "--shutdown-grace", "5",
    ]  # fmt: skip
    env = {"GATEWAY_TOKEN": GATEWAY_TOKEN, "GATEWAY_SINK_TOKEN": MORTY_TOKEN, "GATEWAY_LOG_LEVEL": "WARNING"}
    return Service(Proc(f"gateway g{index}", cluster.root / f"gateway-g{index}.log"), host, argv, env)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        sh("umount", "-l", str(path), check=False)


@contextlib.contextmanager
def multi_host_platform(root: Path, registry: str, build_cache: Path) -> Iterator[Platform]:
    """Start every piece, in the order a deployment would; on exit stop them and check the host."""
    cluster = MultiHostCluster(root, registry)
    try:
        with (
            postgres_server(cluster.gateway_ip, clients=f"{cluster.prefix}.0/24") as database,
            _tmpfs(root.with_name(f"{root.name}-morty-data"), DATA_DIR_SIZE) as data_dir,
        ):
            try:
                yield _start(cluster, database, build_cache, data_dir)
            finally:
                asyncio.run(cluster.close())
    finally:
        sh("ip", "link", "del", cluster.bridge, check=False)  # if PostgreSQL never started


def _start(cluster: MultiHostCluster, database: str, build_cache: Path, data_dir: Path) -> Platform:
    urls = {name: create_database(database, name) for name in ("rik", "morty", "gateway")}
    registry = cluster.forward(cluster.registry)
    cluster.insecure_registries.append(registry)
    for _ in range(2):
        cluster.add_controller(urls["rik"])
    for name in ("w1", "w2", "w3"):
        cluster.add_worker(name)
    morty_host = cluster.add_bridged_host("morty-api")
    morty_url = f"http://{morty_host.inner_ip}:{MORTY_PORT}"
    gateways = [_gateway(cluster, i, urls["gateway"], f"{morty_url}/v1/gateway/records") for i in (1, 2)]
    env: dict[str, Any] = {
        "MORTY_LISTEN": f"{morty_host.inner_ip}:{MORTY_PORT}",
        "MORTY_DATABASE_URL": urls["morty"],
        "MORTY_PUBLIC_URL": morty_url,
        "MORTY_TOKEN": MORTY_TOKEN,
        "MORTY_SECRET_KEY": SECRET_KEY,
        "MORTY_REGISTRY": registry,
        "MORTY_RIK_URL": cluster.url,
        "MORTY_GATEWAY_URL": f"http://{gateways[0].address}:{GATEWAY_ADMIN_PORT}",
        "MORTY_GATEWAY_TOKEN": GATEWAY_TOKEN,
        "MORTY_BUILD_CACHE": str(build_cache),
        "MORTY_SCALING_TICK": "0.25",
        "MORTY_RECONCILE_INTERVAL": "1",
        "MORTY_LOG_LEVEL": "INFO",
    }
    argv = ["ip", "netns", "exec", morty_host.name, sys.executable, "-m", "morty.api", "--data-dir", str(data_dir)]
    morty = Service(Proc("morty-api", cluster.root / "morty-api.log"), morty_host, argv, env)
    cluster.daemons += [morty.proc, *(g.proc for g in gateways)]
    platform = Platform(cluster, database, registry, morty, gateways, data_dir)
    for gateway in gateways:
        platform.start_gateway(gateway)
    platform.start_morty()
    return platform


def wait_until(check: Any, what: str, within: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {within}s: {what}")
