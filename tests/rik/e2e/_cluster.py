"""End-to-end harness: a real controller and real riklets as separate processes, rikctl as a user runs it,
network namespaces standing for other hosts, and a host-side view of what an instance leaves behind.

Everything a `Cluster` creates is named after the test process and a per-cluster sequence number
(bridges, namespaces, veths, subnets, loopback addresses), so clusters never collide with each other
or with other riklets on the machine. `Cluster.close` removes all of it and then checks the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from rik.client import RikClient
from rik.model import EventType, Instance, Node, Resource, Workload
from rik.network._names import chain_names, instance_names

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
RIKCTL = Path(sys.executable).with_name("rikctl")
SCRUB = HERE / "_scrub.py"
CGROUP_ROOT = Path("/sys/fs/cgroup")
RIKLET_PORT_IN_NETNS = 7701
#: The guest kernel of VMs, shared with the VM driver tests (tests/rik/vm): provisioned once per machine.
GUEST_DIR = Path(os.environ.get("RIK_TEST_GUEST_DIR", "/var/cache/rik-test/guest"))
#: Where the VM driver puts QMP sockets (one directory per driver state directory).
VM_RUN_ROOT = Path("/run/rik-vm")

_clusters = itertools.count(1)
M = TypeVar("M", Instance, Node, Workload)


# Small host helpers ----------------------------------------------------------------------------------


#: Where the processes we start cache their bytecode (set by the suite's fixtures). Python starts in
#: half the time with a cache, and a user's installation has one; a prefix keeps it out of the tree.
PYCACHE_PREFIX: Path | None = None


def _env() -> dict[str, str]:
    """The environment for every process we start: no proxies (everything is local), unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    env["RIK_CONFIG"] = "/nonexistent/rik-config.yaml"
    if PYCACHE_PREFIX is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    return env


def sh(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def processes_in_cgroup(fragment: str) -> dict[int, str]:
    """Live processes with a cgroup path containing `fragment` (e.g. `/<cgroup parent>/<container id>`):
    a /proc scan that finds a container's processes whatever their pid namespace."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroups = (entry / "cgroup").read_text()
        except OSError:
            continue
        for line in cgroups.splitlines():
            if fragment in line.partition(":")[2].partition(":")[2] + "/" and pid_alive(int(entry.name)):
                found[int(entry.name)] = line
                break
    return found


def qemu_processes(fragment: str) -> dict[int, str]:
    """Live QEMU processes whose command line contains `fragment` (e.g. a riklet's QMP socket directory)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and fragment in cmdline and pid_alive(int(entry.name)):
            found[int(entry.name)] = cmdline
    return found


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def netns_names() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()}


def link_names() -> set[str]:
    names = set()
    for line in sh("ip", "-o", "link").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        names.add(name)
    return names


def mounts_under(prefix: Path) -> list[str]:
    return [line for line in Path("/proc/mounts").read_text().splitlines() if f" {prefix}/" in line]


def cgroup_dirs(relative: str) -> list[Path]:
    """Existing directories of a cgroup path in every mounted hierarchy (v1, hybrid or v2)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        candidates = [CGROUP_ROOT / relative]
    else:
        candidates = [h / relative for h in CGROUP_ROOT.iterdir() if h.is_dir() and not h.is_symlink()]
    return [c for c in candidates if c.is_dir()]


@dataclass(frozen=True)
class CommandResult:
    argv: list[str]
    code: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\nexit {self.code}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


# Processes -------------------------------------------------------------------------------------------


@dataclass
class Proc:
    """A daemon we started, with its output in a log file."""

    name: str
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        assert not self.alive(), f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env() | (env or {}),
                cwd=REPO_ROOT,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and, for SIGKILL, reap the process."""
        assert self.popen is not None and self.alive(), f"{self.name} is not running"
        self.popen.send_signal(sig)
        if sig == signal.SIGKILL:
            self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was not running)."""
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.terminate()
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Controller:
    proc: Proc
    host: str
    port: int
    database: Path
    node_timeout: float

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class NetnsHost:
    """A network namespace standing for another host, linked to the root namespace by a veth pair."""

    name: str
    outer: str
    inner: str
    outer_ip: str
    inner_ip: str


@dataclass
class Riklet:
    name: str
    data_dir: Path
    bridge: str
    subnet: str
    address: str
    port: int
    proc: Proc
    netns: NetnsHost | None = None
    argv: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def runc_root(self) -> Path:
        return self.data_dir / "containers" / "runtime" / "runc"

    @property
    def cgroup_parent(self) -> str:
        return node_cgroup_parent(self.data_dir)

    def rootfs(self, instance_id: str) -> Path:
        return self.data_dir / "containers" / "instances" / instance_id / "rootfs"

    # The VM driver's layout (src/rik/drivers/vm/_driver.py), seen from outside.

    @property
    def vm_dir(self) -> Path:
        return self.data_dir / "vms"

    @property
    def vm_run_dir(self) -> Path:
        return node_vm_run_dir(self.data_dir)

    def vm_key(self, instance_id: str) -> str:
        return "vm-" + hashlib.sha256(instance_id.encode()).hexdigest()[:16]

    def vm_instance_dir(self, instance_id: str) -> Path:
        return self.vm_dir / "instances" / self.vm_key(instance_id)

    def qmp_socket(self, instance_id: str) -> Path:
        return self.vm_run_dir / f"{self.vm_key(instance_id)}.qmp"

    def qemu_pid(self, instance_id: str) -> int | None:
        """The pid of the instance's QEMU process (found by its QMP socket in its command line)."""
        found = qemu_processes(str(self.qmp_socket(instance_id)))
        assert len(found) <= 1, f"more than one QEMU for {instance_id}: {found}"
        return next(iter(found), None)


# Port forwarding for the registry ---------------------------------------------------------------------


class TcpForwarder:
    """Forwards `listen_host:<port>` to `target`, in a thread: makes the registry (127.0.0.1 only)
    reachable from another network namespace."""

    def __init__(self, listen_host: str, target_host: str, target_port: int) -> None:
        self.listen_host, self.target = listen_host, (target_host, target_port)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("forwarder did not start")
        return f"{self.listen_host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


# The cluster -----------------------------------------------------------------------------------------


def _free_octet(taken: Callable[[int], bool], start: int, low: int, high: int) -> int:
    span = high - low + 1
    for step in range(span):
        candidate = low + (start + step) % span
        if not taken(candidate):
            return candidate
    raise RuntimeError(f"no free octet in {low}..{high}")


class Cluster:
    """Starts and stops a controller, riklets and fake hosts for one test; `close` removes everything."""

    def __init__(self, root: Path, registry: str) -> None:
        self.root = root
        self.registry = registry
        self.seq = next(_clusters)
        self.tag = f"{os.getpid() % 10000:04d}{self.seq % 100:02d}"
        self.identity = f"e2e-controller-{self.tag}"
        routes = sh("ip", "-4", "route", "show") + sh("ip", "-4", "-o", "addr", "show")
        # A /16 for instance subnets (and a matching 127.X.0.0/16 for loopback node addresses).
        self.octet = _free_octet(lambda o: f" 10.{o}." in f" {routes}", os.getpid() + self.seq * 7, 140, 199)
        self.instance_cidr = f"10.{self.octet}.0.0/16"
        self.controller: Controller | None = None
        self.riklets: dict[str, Riklet] = {}
        self.hosts: list[NetnsHost] = []
        self.forwarders: list[TcpForwarder] = []
        self.insecure_registries = [registry]
        self.startup_timeout = 30.0
        """Seconds a process we start may take to answer its health check."""
        self.links: list[str] = []
        """Interfaces made outside `add_host` (e.g. a bridge the hosts share), removed by `close`."""
        self.daemons: list[Proc] = []
        """Processes other than controllers and riklets, stopped by `close` after the riklets."""

    def controllers(self) -> list[Controller]:
        return [self.controller] if self.controller else []

    def processes(self) -> list[Proc]:
        return [c.proc for c in self.controllers()] + [r.proc for r in self.riklets.values()] + self.daemons

    # Controller ---------------------------------------------------------------------------------------

    def start_controller(self, *, host: str = "127.0.0.1", node_timeout: float = 15.0) -> Controller:
        if self.controller is None:
            proc = Proc("controller", self.root / "controller.log")
            self.controller = Controller(proc, host, free_port(host), self.root / "controller.db", node_timeout)
        c = self.controller
        c.proc.start(
            [
                sys.executable, "-m", "rik.controller",
                "--listen", f"{c.host}:{c.port}",
                "--database", f"sqlite:///{c.database}",
                "--node-timeout", str(c.node_timeout),
                "--lease-ttl", "5",
                "--identity", self.identity,  # a restarted controller takes its lease back at once
                "--instance-cidr", self.instance_cidr,
            ]
        )  # fmt: skip
        self._wait_http(f"{c.url}/healthz", lambda body: body.get("leader") is True, c.proc, "controller leads")
        return c

    def restart_controller(self) -> tuple[int | None, float]:
        """SIGTERM the controller, start it again on the same database; (exit code, seconds to stop)."""
        assert self.controller is not None
        started = time.monotonic()
        code = self.controller.proc.stop(timeout=15)
        stopped = time.monotonic() - started
        self.start_controller()
        return code, stopped

    @property
    def url(self) -> str:
        assert self.controller is not None, "start the controller first"
        return self.controller.url

    def client(self) -> RikClient:
        return RikClient(self.url)

    # Hosts --------------------------------------------------------------------------------------------

    def add_host(self) -> NetnsHost:
        """A network namespace standing for another host: 172.31.N.2/24, linked to 172.31.N.1 here."""
        addresses = sh("ip", "-4", "-o", "addr", "show")
        index = len(self.hosts) + 1
        octet = _free_octet(lambda o: f" 172.31.{o}." in addresses, os.getpid() * 3 + self.seq * 5, 1, 250)
        host = NetnsHost(
            name=f"rke-host-{self.tag}-{index}",
            outer=f"rkh{self.tag}{index}",
            inner=f"rki{self.tag}{index}",
            outer_ip=f"172.31.{octet}.1",
            inner_ip=f"172.31.{octet}.2",
        )
        self.hosts.append(host)
        sh("ip", "netns", "add", host.name)
        sh("ip", "link", "add", host.outer, "type", "veth", "peer", "name", host.inner, "netns", host.name)
        sh("ip", "addr", "add", f"{host.outer_ip}/24", "dev", host.outer)
        sh("ip", "link", "set", host.outer, "up")
        for command in (f"addr add {host.inner_ip}/24 dev {host.inner}", f"link set {host.inner} up", "link set lo up"):
            sh("ip", "-n", host.name, *command.split())
        sh("ip", "-n", host.name, "route", "add", "default", "via", host.outer_ip)
        return host

    def expose_registry(self, host: NetnsHost) -> str:
        """The registry as `host` reaches it (forwarded from its gateway address); returns host:port."""
        registry_host, _, registry_port = self.registry.rpartition(":")
        forwarder = TcpForwarder(host.outer_ip, registry_host, int(registry_port))
        self.forwarders.append(forwarder)
        address = forwarder.start()
        self.insecure_registries.append(address)
        return address

    # Riklets ------------------------------------------------------------------------------------------

    def start_riklet(
        self,
        name: str,
        *,
        netns: NetnsHost | None = None,
        address: str | None = None,
        cpu: int = 2000,
        memory: int = 2048,
        heartbeat: float = 1.0,
        options: Sequence[str] = (),
    ) -> Riklet:
        """Start riklet `name` (again, with the same data directory, bridge and subnet if it ran before)
        and wait until it has registered and reconciled its instances. `options`: more riklet arguments."""
        riklet = self.riklets.get(name)
        if riklet is None:
            index = len(self.riklets) + 1
            if netns is not None:
                address, port = address or netns.inner_ip, RIKLET_PORT_IN_NETNS
            else:
                address = address or f"127.{self.octet}.0.{index}"
                port = free_port(address)
            riklet = Riklet(
                name=name,
                data_dir=self.root / name,
                bridge=f"rk{self.tag}{index}",
                subnet=f"10.{self.octet}.{index}.0/24",
                address=address,
                port=port,
                proc=Proc(f"riklet {name}", self.root / f"riklet-{name}.log"),
                netns=netns,
            )
            self.riklets[name] = riklet
            riklet.argv = [
                *(["ip", "netns", "exec", netns.name] if netns else []),
                sys.executable, "-m", "rik.riklet",
                "--name", name,
                "--controller", self.url,
                "--address", riklet.address,
                "--listen", f"{riklet.address}:{riklet.port}",
                "--data-dir", str(riklet.data_dir),
                "--bridge", riklet.bridge,
                "--subnet", riklet.subnet,
                "--cpu", str(cpu),
                "--memory", str(memory),
                "--heartbeat-interval", str(heartbeat),
                "--guest-dir", str(GUEST_DIR),
                *itertools.chain.from_iterable(("--insecure-registry", r) for r in self.insecure_registries),
                *options,
            ]  # fmt: skip
        riklet.proc.start(riklet.argv)
        self._wait_http(
            f"{riklet.url}/healthz", lambda body: body.get("status") == "ok", riklet.proc, f"riklet {name} ready"
        )
        return riklet

    def _wait_http(self, url: str, ready: Callable[[dict[str, Any]], bool], proc: Proc, what: str) -> None:
        """Bounded poll of a health endpoint; fails early, with the log, if the process dies."""
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        with httpx.Client(trust_env=False, timeout=2.0) as http:
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise AssertionError(f"{proc.name} exited ({proc.popen and proc.popen.returncode}):\n{proc.tail()}")
                try:
                    response = http.get(url)
                    last = f"{response.status_code} {response.text}"
                    if response.status_code == 200 and ready(response.json()):
                        return
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what} at {url} (last: {last}):\n{proc.tail()}")

    # rikctl -------------------------------------------------------------------------------------------

    def _rikctl_argv(self, args: Iterable[str]) -> list[str]:
        return [str(RIKCTL), "-s", self.url, *args]

    async def rikctl(self, *args: str) -> CommandResult:
        argv = self._rikctl_argv(args)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode is not None
        return CommandResult(argv, proc.returncode, out.decode(), err.decode())

    def rikctl_sync(self, *args: str) -> CommandResult:
        argv = self._rikctl_argv(args)
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=_env(), timeout=90)
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)

    def write_manifest(self, name: str, document: dict[str, Any] | str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
        return path

    # Waiting on the watch API -------------------------------------------------------------------------

    async def wait_instances(
        self, check: Callable[[list[Instance]], bool], what: str, timeout: float = 30.0
    ) -> list[Instance]:
        """Wait, following the change feed, until `check(all instances)` holds; returns them."""
        return await self._wait(Resource.INSTANCES, Instance, lambda i: i.id, check, what, timeout)

    async def wait_nodes(self, check: Callable[[list[Node]], bool], what: str, timeout: float = 30.0) -> list[Node]:
        return await self._wait(Resource.NODES, Node, lambda n: n.name, check, what, timeout)

    async def _wait(
        self,
        resource: Resource,
        model: type[M],
        key: Callable[[M], str],
        check: Callable[[list[M]], bool],
        what: str,
        timeout: float,
    ) -> list[M]:
        seen: dict[str, M] = {}
        async with self.client() as client:
            try:
                async with asyncio.timeout(timeout):
                    if resource == Resource.INSTANCES:
                        listing: Any = await client.list_instances()
                    else:
                        listing = await client.list_nodes()
                    seen = {key(item): item for item in listing.items}
                    if check(list(seen.values())):
                        return list(seen.values())
                    events = client.watch(since=listing.resource_version, resources=resource.value)
                    async with contextlib.aclosing(events):
                        async for event in events:
                            item = model.model_validate(event.object)
                            if event.type == EventType.DELETED:
                                seen.pop(key(item), None)
                            else:
                                seen[key(item)] = item
                            if check(list(seen.values())):
                                return list(seen.values())
            except TimeoutError:
                pass
        summary = "\n".join(f"  {describe(item)}" for item in seen.values()) or "  (none)"
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen:\n{summary}\n{self.logs()}")

    async def running_instance(self, workload: str, timeout: float = 30.0) -> Instance:
        """Wait until `workload` has exactly one instance and it is Running; return it."""
        found = await self.wait_instances(
            lambda items: [i.phase.value for i in items if i.workload == workload] == ["Running"],
            f"the instance of {workload} to run",
            timeout,
        )
        return next(i for i in found if i.workload == workload)

    def logs(self, lines: int = 25) -> str:
        procs = self.processes()
        return "\n".join(f"----- {p.name} ({p.log_path}):\n{p.tail(lines)}" for p in procs)

    # Host view of an instance -------------------------------------------------------------------------

    async def container_state(self, riklet: Riklet, instance_id: str) -> dict[str, Any] | None:
        """`runc --root <riklet data dir>/containers/runtime/runc state ID`, or None if there is none."""
        proc = await asyncio.create_subprocess_exec(
            "runc", "--root", str(riklet.runc_root), "state", instance_id,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            return None
        state: dict[str, Any] = json.loads(out)
        return state

    async def containers(self, riklet: Riklet) -> list[dict[str, Any]]:
        """`runc list` of the riklet's runtime root."""
        if not riklet.runc_root.is_dir():
            return []
        proc = await asyncio.create_subprocess_exec(
            "runc", "--root", str(riklet.runc_root), "list", "--format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        listed: list[dict[str, Any]] | None = json.loads(out or b"null")
        return listed or []

    async def footprint(self, riklet: Riklet, instance_id: str, pid: int) -> dict[str, bool]:
        """What of an instance of a riklet in the root namespace exists on the host: description → present."""
        names = instance_names(riklet.bridge, instance_id)
        rootfs = riklet.rootfs(instance_id)
        cgroup = f"{riklet.cgroup_parent}/{instance_id}"
        dnat = await asyncio.to_thread(sh, "iptables", "-w", "-t", "nat", "-S", chain_names(riklet.bridge).dnat)
        return {
            f"container {instance_id} (runc state)": await self.container_state(riklet, instance_id) is not None,
            f"container process {pid}": pid_alive(pid),
            f"processes in cgroup {cgroup}": bool(processes_in_cgroup(f"/{cgroup}/")),
            f"network namespace {names.netns}": names.netns in netns_names(),
            f"veth {names.host_veth}": names.host_veth in link_names(),
            f"overlay mount on {rootfs}": any(f" {rootfs} overlay " in m for m in mounts_under(rootfs.parent)),
            f"cgroup {cgroup}": bool(cgroup_dirs(cgroup)),
            f"DNAT rule {names.rule_tag}": names.rule_tag in dnat,
            f"driver directory {rootfs.parent}": rootfs.parent.exists(),
            f"instance record of {instance_id}": (riklet.data_dir / "instances" / f"{instance_id}.json").exists(),
        }

    async def vm_footprint(self, riklet: Riklet, instance_id: str, pid: int) -> dict[str, bool]:
        """What of a VM instance exists on the host: description → present. The tap lives in the instance's
        network namespace (so it goes with it); the disk overlay and config disk in its driver directory."""
        names = instance_names(riklet.bridge, instance_id)
        directory = riklet.vm_instance_dir(instance_id)
        socket_path = riklet.qmp_socket(instance_id)
        namespaces = netns_names()
        tap = names.netns in namespaces and bool(sh("ip", "-n", names.netns, "-o", "link", "show", "tap0", check=False))
        dnat = await asyncio.to_thread(sh, "iptables", "-w", "-t", "nat", "-S", chain_names(riklet.bridge).dnat)
        return {
            f"qemu process {pid}": pid_alive(pid),
            f"qemu processes with {socket_path}": bool(qemu_processes(str(socket_path))),
            f"network namespace {names.netns}": names.netns in namespaces,
            f"tap0 in {names.netns}": tap,
            f"veth {names.host_veth}": names.host_veth in link_names(),
            f"disk overlay {directory / 'overlay.qcow2'}": (directory / "overlay.qcow2").exists(),
            f"config disk {directory / 'config.img'}": (directory / "config.img").exists(),
            f"QMP socket {socket_path}": socket_path.exists(),
            f"DNAT rule {names.rule_tag}": names.rule_tag in dnat,
            f"driver directory {directory}": directory.exists(),
            f"instance record of {instance_id}": (riklet.data_dir / "instances" / f"{instance_id}.json").exists(),
        }

    # Teardown -----------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop everything this cluster started and remove what its riklets left; then check the host."""
        problems: list[str] = []
        if any(c.proc.alive() for c in self.controllers()) and any(r.proc.alive() for r in self.riklets.values()):
            # The normal way first: delete the workloads and let the riklets remove their instances.
            with contextlib.suppress(Exception):
                async with self.client() as client:
                    for workload in (await client.list_workloads()).items:
                        await client.delete_workload(workload.metadata.name)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(15):
                            while (await client.list_instances()).items:
                                await asyncio.sleep(0.2)
        for daemon in self.daemons:
            await asyncio.to_thread(daemon.stop, 15)
        for riklet in self.riklets.values():
            await asyncio.to_thread(riklet.proc.stop, 10)
        for controller in self.controllers():
            await asyncio.to_thread(controller.proc.stop, 15)
        for riklet in self.riklets.values():
            # Whatever is left (killed riklets, failed deletions): the driver destroys it, riklet or not.
            scrub = [sys.executable, str(SCRUB), str(riklet.data_dir), riklet.bridge, riklet.subnet, riklet.address]
            proc = await asyncio.create_subprocess_exec(
                *scrub, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(), cwd=REPO_ROOT
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
            (self.root / f"scrub-{riklet.name}.log").write_bytes(out)
            if proc.returncode != 0:
                problems.append(f"scrub of {riklet.name} failed:\n{out.decode(errors='replace')[-2000:]}")
        for host in self.hosts:
            sh("ip", "link", "del", host.outer, check=False)
            sh("ip", "netns", "del", host.name, check=False)
        for link in self.links:
            sh("ip", "link", "del", link, check=False)
        for forwarder in self.forwarders:
            await asyncio.to_thread(forwarder.stop)
        problems += await asyncio.to_thread(self.leftovers)
        if problems:
            raise AssertionError("the e2e cluster left things behind:\n" + "\n".join(problems))

    def leftovers(self) -> list[str]:
        """Everything of this cluster still on the host (empty when clean)."""
        found = []
        procs = self.processes()
        found += [f"process still running: {p.name} (pid {p.pid})" for p in procs if p.alive()]
        found += [f"mount: {line}" for line in mounts_under(self.root)]
        found += [f"network namespace {n}" for n in netns_names() if n in {h.name for h in self.hosts}]
        found += [f"interface {n}" for n in link_names() & ({h.outer for h in self.hosts} | set(self.links))]
        for riklet in self.riklets.values():
            found += [f"{riklet.name}: {item}" for item in node_leftovers(riklet.data_dir, riklet.bridge)]
        return found


def node_cgroup_parent(data_dir: Path) -> str:
    """How a riklet's container driver names its cgroup parent (from its state directory)."""
    return "rik-" + hashlib.sha256(str((data_dir / "containers").resolve()).encode()).hexdigest()[:8]


def node_vm_run_dir(data_dir: Path) -> Path:
    """The directory of a riklet's QMP sockets: named after its VM driver's state directory."""
    return VM_RUN_ROOT / hashlib.sha256(str((data_dir / "vms").resolve()).encode()).hexdigest()[:8]


def node_leftovers(data_dir: Path, bridge: str, instance_ids: Iterable[str] = ()) -> list[str]:
    """What a riklet (state in `data_dir`, instances on `bridge`) still has on the host once it is gone: container
    processes, cgroups, network namespaces, veths (of `instance_ids`), its bridge, iptables rules, QEMU processes,
    QMP sockets, VM instance directories, and mounts under `data_dir`, its QMP directory or its namespaces.
    Empty when clean."""
    found = [
        f"container process {pid} ({where})"
        for pid, where in processes_in_cgroup(f"/{node_cgroup_parent(data_dir)}/").items()
    ]
    run_dir = node_vm_run_dir(data_dir)
    ours = (f" {data_dir}/", f" {run_dir}/", f" /run/netns/rik-{bridge}-")
    found += [
        f"mount: {line}" for line in Path("/proc/mounts").read_text().splitlines() if any(o in line for o in ours)
    ]
    found += [f"network namespace {n}" for n in netns_names() if n.startswith(f"rik-{bridge}-")]
    veths = {instance_names(bridge, i).host_veth for i in instance_ids}
    found += [f"interface {n}" for n in link_names() & ({bridge} | veths)]
    chain = f"RIK-{bridge}"
    found += [
        f"iptables: {line}"
        for line in sh("iptables-save").splitlines()
        if f"{chain} " in f"{line} " or f"{chain}-" in line
    ]
    found += [f"cgroup {d}" for d in cgroup_dirs(node_cgroup_parent(data_dir))]
    found += [f"qemu process {pid}: {cmd[:200]}" for pid, cmd in qemu_processes(str(data_dir / "vms")).items()]
    if run_dir.exists():
        found.append(f"QMP socket directory {run_dir}: {sorted(os.listdir(run_dir))}")
    vm_instances = data_dir / "vms" / "instances"
    found += [f"VM instance directory {d}" for d in (vm_instances.iterdir() if vm_instances.is_dir() else [])]
    return found


def describe(item: Instance | Node | Workload) -> str:
    if isinstance(item, Instance):
        ports = ",".join(f"{p.port}->{item.host_address}:{p.host_port}" for p in item.ports)
        return (
            f"instance {item.id} node={item.node} phase={item.phase.value} desired={item.desired_state.value}"
            f" reason={item.reason!r} message={item.message!r} address={item.address} ports={ports}"
        )
    if isinstance(item, Node):
        return f"node {item.name} status={item.status.value} address={item.address} runtimes={item.runtimes}"
    return f"workload {item.metadata.name} status={item.status}"


def pod_manifest(
    name: str,
    image: str,
    *,
    replicas: int = 1,
    cpu: int = 100,
    memory: int = 64,
    port: int = 8080,
) -> dict[str, Any]:
    return {
        "apiVersion": "rik/v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"suite": "e2e"}},
        "spec": {
            "image": image,
            "ports": [{"port": port}],
            "replicas": replicas,
            "resources": {"cpu": cpu, "memory": memory},
        },
    }


def in_subnet(address: str | None, subnet: str) -> bool:
    return address is not None and ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
