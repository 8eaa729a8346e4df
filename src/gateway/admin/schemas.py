"""Response shapes of the management API (the request shapes are the specs in `gateway.model`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.model import RouteSpec, ServiceSpec, TargetSpec


class RouteRecord(BaseModel):
    name: str
    spec: RouteSpec
    resource_version: int
    created_at: str
    updated_at: str


class ServiceRecord(BaseModel):
    name: str
    spec: ServiceSpec
    resource_version: int
    created_at: str
    updated_at: str


class TargetRecord(BaseModel):
    service: str
    address: str
    spec: TargetSpec
    resource_version: int
    created_at: str
    updated_at: str


class RouteList(BaseModel):
    items: list[RouteRecord]
    resource_version: int


class ServiceList(BaseModel):
    items: list[ServiceRecord]
    resource_version: int


class TargetList(BaseModel):
    items: list[TargetRecord]
    resource_version: int


class Deleted(BaseModel):
    kind: str
    name: str
    resource_version: int


class Synced(BaseModel):
    resource_version: int
    workers: int


class WorkerStatus(BaseModel):
    worker: str
    pid: int
    ready: bool
    resource_version: int
    seconds_since_report: float


class RouteStats(BaseModel):
    in_flight: int
    held: int


class TargetStats(BaseModel):
    in_flight: int
    usable: bool


class Stats(BaseModel):
    """In-flight concurrency summed over live workers: what an autoscaler reads."""

    workers: list[WorkerStatus]
    routes: dict[str, RouteStats]
    targets: dict[str, dict[str, TargetStats]]


class Health(BaseModel):
    status: str
    workers_ready: int
    workers_expected: int


def route_record(stored: dict[str, Any]) -> RouteRecord:
    return RouteRecord.model_validate(stored)


def service_record(stored: dict[str, Any]) -> ServiceRecord:
    return ServiceRecord.model_validate(stored)


def target_record(stored: dict[str, Any]) -> TargetRecord:
    service, _, address = stored["name"].partition("/")
    return TargetRecord.model_validate({**stored, "service": service, "address": address})
