"""The whole platform on one machine, supervised: what `morty up` starts in the background.

    python -m morty.cli.platform --data-dir DIR [--ports-from N] [--no-vm]

Starts, in order, each waiting for the previous to be healthy: the OCI registry (Debian's docker-registry), the
RIK controller, a riklet, the API gateway and Morty APIs (builder, RIK backend, gateway connector), all with
SQLite and local storage under DIR, logs in DIR/logs. A service that exits is restarted (with backoff) and the
restart is counted in DIR/run/status.json, which `morty status` reads. SIGTERM stops the services in reverse
order, then removes every instance and the node's network (`riklet --teardown`), so nothing keeps running.

VMs: once the riklet is ready (its VM runtime probed: QEMU present, guest kernel provisioned), the supervisor
records whether it offers VMs in status.json (`vms`: `available`, `reason`). Where it does not, or with
`--no-vm`, Morty APIs start with `MORTY_VM_UNAVAILABLE` set to the reason: functions default to container
isolation and a function asking for `vm` is refused.

Ports (with `--ports-from N`: N, N+1, ...): gateway 8080, gateway admin 8081, Morty APIs 7800, RIK controller
7700, riklet 7701, registry 5000.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("morty.platform")
DEFAULT_DATA_DIR = Path("/var/lib/morty")
PORTS = {"gateway": 8080, "gateway_admin": 8081, "api": 7800, "controller": 7700, "riklet": 7701, "registry": 5000}
START_TIMEOUT = 120.0
RIKLET_START_TIMEOUT = 480.0
"""The riklet is ready once its runtimes are probed; the first run downloads and unpacks the guest kernel."""
NO_VM = "turned off by `morty up --no-vm`"
BRIDGE = "mortybr0"


@dataclass
class Service:
    name: str
    argv: list[str]
    health: str
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = START_TIMEOUT
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    healthy: bool = False
    next_start: float = 0.0


def ports_from(base: int | None) -> dict[str, int]:
    if base is None:
        return dict(PORTS)
    return {name: base + i for i, name in enumerate(PORTS)}


def token(path: Path) -> str:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def services(data: Path, ports: dict[str, int], bridge: str, no_vm: bool = False) -> list[Service]:
    python = sys.executable
    morty_token = token(data / "morty" / "token")
    gateway_token = token(data / "gateway" / "token")
    registry = f"127.0.0.1:{ports['registry']}"
    controller = f"http://127.0.0.1:{ports['controller']}"
    api = f"http://127.0.0.1:{ports['api']}"
    admin = f"http://127.0.0.1:{ports['gateway_admin']}"
    registry_config = data / "registry" / "config.yml"
    registry_config.parent.mkdir(parents=True, exist_ok=True)
    registry_config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {data / 'registry' / 'storage'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {registry}\n"
    )
    return [
        Service("registry", ["docker-registry", "serve", str(registry_config)], f"http://{registry}/v2/"),
        Service(
            "controller",
            [
                python,
                "-m",
                "rik.controller",
                "--listen",
                f"127.0.0.1:{ports['controller']}",
                "--database",
                f"sqlite:///{data / 'rik' / 'controller.db'}",
            ],
            f"{controller}/healthz",
        ),  # fmt: skip
        Service(
            "riklet",
            [
                python,
                "-m",
                "rik.riklet",
                "--name",
                "local",
                "--controller",
                controller,
                "--address",
                "127.0.0.1",
                "--listen",
                f"127.0.0.1:{ports['riklet']}",
                "--data-dir",
                str(data / "rik" / "node"),
                "--bridge",
                bridge,
                "--insecure-registry",
                registry,
                *(["--no-vm"] if no_vm else []),
            ],
            f"http://127.0.0.1:{ports['riklet']}/healthz",
            start_timeout=RIKLET_START_TIMEOUT,
        ),  # fmt: skip
        Service(
            "gateway",
            [
                python,
                "-m",
                "gateway",
                "--listen",
                f"0.0.0.0:{ports['gateway']}",
                "--admin-listen",
                f"127.0.0.1:{ports['gateway_admin']}",
                "--database",
                f"sqlite:///{data / 'gateway' / 'gateway.db'}",
                "--sink",
                f"{api}/v1/gateway/records",
            ],
            f"{admin}/readyz",
            {"GATEWAY_TOKEN": gateway_token, "GATEWAY_SINK_TOKEN": morty_token},
        ),  # fmt: skip
        Service(
            "morty-api",
            [
                python,
                "-m",
                "morty.api",
                "--listen",
                f"127.0.0.1:{ports['api']}",
                "--data-dir",
                str(data / "morty"),
                "--registry",
                registry,
                "--rik-url",
                controller,
                "--gateway-url",
                admin,
            ],
            f"{api}/healthz",
            {"MORTY_TOKEN": morty_token, "MORTY_GATEWAY_TOKEN": gateway_token},
        ),  # fmt: skip
    ]


class Supervisor:
    def __init__(self, data: Path, ports: dict[str, int], bridge: str, no_vm: bool = False) -> None:
        self.data, self.ports, self.bridge, self.no_vm = data, ports, bridge, no_vm
        self.logs = data / "logs"
        self.run_dir = data / "run"
        self.services = services(data, ports, bridge, no_vm)
        self.vms: dict[str, Any] | None = None
        """Whether functions can run as VMs here, known once the riklet is ready."""
        self.stopping = False
        self.http = httpx.Client(timeout=2, trust_env=False)

    def start(self, service: Service) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{service.name}.log").open("ab") as output:
            output.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting\n".encode())
            output.flush()
            service.process = subprocess.Popen(
                service.argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **service.env}, start_new_session=True,
            )  # fmt: skip
        service.healthy = False
        log.info("started %s (pid %d)", service.name, service.process.pid)

    def health(self, service: Service) -> dict[str, Any] | None:
        """The health endpoint's body once it answers 200 with no `status` other than `ok`, else None."""
        try:
            response = self.http.get(service.health)
            body = response.json() if response.content else {}
        except (httpx.HTTPError, ValueError):
            return None
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status", "ok") != "ok":
            return None
        return body

    def probe(self, service: Service) -> bool:
        return self.health(service) is not None

    def decide_vms(self, riklet: dict[str, Any]) -> None:
        """Tell Morty APIs (started after the riklet) whether VMs can run, and why not."""
        if self.no_vm:
            reason = NO_VM
        elif "vm" in riklet.get("runtimes", []):
            reason = ""
        else:
            reason = str(riklet.get("unavailable", {}).get("vm") or "the riklet offers no VM runtime")
        self.vms = {"available": not reason, "reason": reason or None}
        for service in self.services:
            if service.name == "morty-api":
                service.env["MORTY_VM_UNAVAILABLE"] = reason
        if reason:
            log.warning("VMs are not available (%s): functions run as containers", reason)

    def write_status(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        status = {
            "pid": os.getpid(),
            "ports": self.ports,
            "data_dir": str(self.data),
            "stopping": self.stopping,
            "vms": self.vms,
            "services": {
                s.name: {
                    "pid": s.process.pid if s.process else None,
                    "running": bool(s.process and s.process.poll() is None),
                    "healthy": s.healthy,
                    "restarts": s.restarts,
                    "health": s.health,
                    "log": str(self.logs / f"{s.name}.log"),
                }
                for s in self.services
            },
        }
        tmp = self.run_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(self.run_dir / "status.json")

    def bring_up(self) -> None:
        for service in self.services:
            self.start(service)
            deadline = time.monotonic() + service.start_timeout
            while (health := self.health(service)) is None:
                if self.stopping:
                    return
                assert service.process is not None
                if service.process.poll() is not None:
                    raise RuntimeError(f"{service.name} exited ({service.process.returncode}) while starting")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{service.name} not healthy within {service.start_timeout:.0f}s")
                time.sleep(0.1)
            if service.name == "riklet":
                self.decide_vms(health)
            service.healthy = True
            self.write_status()

    def watch(self) -> None:
        while not self.stopping:
            for service in self.services:
                process = service.process
                if process is not None and process.poll() is not None and not self.stopping:
                    service.restarts += 1
                    service.healthy = False
                    delay = min(30.0, 0.5 * 2 ** min(service.restarts, 6))
                    log.warning("%s exited (%s); restarting in %.1fs", service.name, process.returncode, delay)
                    service.process, service.next_start = None, time.monotonic() + delay
                if service.process is None and time.monotonic() >= service.next_start and not self.stopping:
                    self.start(service)
                if service.process is not None:
                    service.healthy = self.probe(service)
            self.write_status()
            for _ in range(10):
                if self.stopping:
                    break
                time.sleep(0.1)

    def shut_down(self) -> None:
        self.stopping = True
        self.write_status()
        for service in reversed(self.services):
            process = service.process
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.info("stopped %s", service.name)
        node = self.data / "rik" / "node"
        if node.exists():
            subprocess.run(
                [sys.executable, "-m", "rik.riklet", "--teardown", "--name", "local", "--data-dir", str(node),
                 "--bridge", self.bridge, "--address", "127.0.0.1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )  # fmt: skip
            log.info("removed every instance and the node network")
        (self.run_dir / "status.json").unlink(missing_ok=True)
        (self.run_dir / "supervisor.pid").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="morty-platform", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--ports-from", type=int, default=None)
    parser.add_argument("--bridge", default=BRIDGE)
    parser.add_argument("--no-vm", action="store_true", help="run functions as containers, never as VMs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    data = args.data_dir.resolve()
    supervisor = Supervisor(data, ports_from(args.ports_from), args.bridge, args.no_vm)
    supervisor.run_dir.mkdir(parents=True, exist_ok=True)
    (supervisor.run_dir / "supervisor.pid").write_text(str(os.getpid()))

    def stop(_signum: int, _frame: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        supervisor.write_status()
        supervisor.bring_up()
        supervisor.watch()
    except RuntimeError as exc:
        log.error("platform did not start: %s", exc)
        supervisor.shut_down()
        sys.exit(1)
    supervisor.shut_down()


if __name__ == "__main__":
    main()
