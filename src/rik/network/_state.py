"""Persisted allocations of one node network: instance addresses (IPAM) and host ports.

The state is a small JSON file rewritten atomically under an `flock`, so allocations survive riklet
restarts and two processes sharing a state directory never hand out the same address. All methods block
(file I/O and `flock`): call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rik.network._errors import NetworkError


@dataclass
class PortRecord:
    port: int
    protocol: str
    host_port: int


@dataclass
class InstanceRecord:
    ip: str
    netns: str
    host_veth: str
    ports: list[PortRecord] = field(default_factory=list)


@dataclass
class _State:
    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    #: Cursors so a just-freed address or port is not handed out again at once (stale ARP/conntrack).
    next_ip: int = 0
    next_port: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        instances = {
            key: InstanceRecord(
                ip=value["ip"],
                netns=value["netns"],
                host_veth=value["host_veth"],
                ports=[PortRecord(**p) for p in value.get("ports", [])],
            )
            for key, value in data.get("instances", {}).items()
        }
        return cls(instances, int(data.get("next_ip", 0)), int(data.get("next_port", 0)))


class NetworkState:
    def __init__(self, directory: Path, subnet: ipaddress.IPv4Network, port_range: tuple[int, int]) -> None:
        self._path = directory / "network.json"
        self._lock_path = directory / "network.lock"
        self._subnet = subnet
        self._port_range = port_range

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_State]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                state = _State.from_json(json.loads(self._path.read_text()))
            except FileNotFoundError:
                state = _State()
            before = asdict(state)
            yield state
            if asdict(state) != before:
                tmp = self._path.with_suffix(".tmp")
                tmp.write_text(json.dumps(asdict(state), indent=1, sort_keys=True))
                os.replace(tmp, self._path)
        finally:
            os.close(fd)

    def instances(self) -> dict[str, InstanceRecord]:
        with self._transaction() as state:
            return dict(state.instances)

    def get(self, instance_id: str) -> InstanceRecord | None:
        with self._transaction() as state:
            return state.instances.get(instance_id)

    def allocate_address(self, instance_id: str, netns: str, host_veth: str) -> InstanceRecord:
        """Reserve an address for `instance_id` (the same one again if it already has one)."""
        with self._transaction() as state:
            if instance_id in state.instances:
                return state.instances[instance_id]
            # Host addresses minus the first one, which is the bridge (gateway).
            first = int(self._subnet.network_address) + 2
            count = int(self._subnet.broadcast_address) - first
            used = {record.ip for record in state.instances.values()}
            for offset in range(max(count, 0)):
                index = (state.next_ip + offset) % count
                candidate = str(ipaddress.IPv4Address(first + index))
                if candidate not in used:
                    state.next_ip = index + 1
                    record = InstanceRecord(ip=candidate, netns=netns, host_veth=host_veth)
                    state.instances[instance_id] = record
                    return record
            raise NetworkError("AddressPoolExhausted", f"no free address left in {self._subnet}")

    def allocate_ports(self, instance_id: str, wanted: list[tuple[int, str, int | None]]) -> list[PortRecord]:
        """Record host ports for `(port, protocol, host_port or None)`; allocate the unset ones."""
        low, high = self._port_range
        with self._transaction() as state:
            record = state.instances.get(instance_id)
            if record is None:
                raise NetworkError("NotAttached", f"instance {instance_id} has no network attachment")
            used = {
                (p.host_port, p.protocol)
                for key, other in state.instances.items()
                if key != instance_id
                for p in other.ports
            }
            result: list[PortRecord] = []
            for port, protocol, host_port in wanted:
                existing = next((p for p in record.ports if p.port == port and p.protocol == protocol), None)
                if existing is not None and host_port in (None, existing.host_port):
                    result.append(existing)
                elif host_port is not None:
                    if (host_port, protocol) in used:
                        raise NetworkError(
                            "PortConflict", f"host port {host_port}/{protocol} is already in use on this node"
                        )
                    result.append(PortRecord(port, protocol, host_port))
                else:
                    result.append(PortRecord(port, protocol, self._free_port(state, used, protocol)))
                used.add((result[-1].host_port, protocol))
            span = high - low + 1
            if not 0 <= state.next_port - low < span:
                state.next_port = low
            record.ports = result
            return result

    def _free_port(self, state: _State, used: set[tuple[int, str]], protocol: str) -> int:
        low, high = self._port_range
        span = high - low + 1
        start = state.next_port - low if low <= state.next_port <= high else 0
        for offset in range(span):
            candidate = low + (start + offset) % span
            if (candidate, protocol) not in used:
                state.next_port = candidate + 1
                return candidate
        raise NetworkError("PortPoolExhausted", f"no free host port left in {low}-{high}")

    def forget(self, instance_id: str) -> InstanceRecord | None:
        with self._transaction() as state:
            return state.instances.pop(instance_id, None)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
