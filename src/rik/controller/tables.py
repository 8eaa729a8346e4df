"""The controller's SQL schema (SQLAlchemy 2 declarative). Alembic migrations in `migrations/` create it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class WorkloadRow(Base):
    __tablename__ = "workloads"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]]
    spec: Mapped[dict[str, Any]]
    resource_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class InstanceRow(Base):
    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    workload: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]]
    cpu: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(64), index=True)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    desired_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(256))
    message: Mapped[str] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(64))
    ports: Mapped[list[Any]]
    resource_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(255))
    riklet_url: Mapped[str] = mapped_column(String(1024))
    cpu: Mapped[int] = mapped_column(Integer)
    memory: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]]
    runtimes: Mapped[list[Any]]
    subnet: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    last_heartbeat: Mapped[datetime]
    resource_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]


class EventRow(Base):
    """The change feed: one row per change, numbered by the global resource version."""

    __tablename__ = "events"

    resource_version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    resource: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    node: Mapped[str | None] = mapped_column(String(64))
    prev_node: Mapped[str | None] = mapped_column(String(64))
    object: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


RV_COUNTER = "resource_version"
"""The counter row that numbers every change."""


class CounterRow(Base):
    """Holds the resource-version counter. Incrementing it row-locks, which orders every writing
    transaction, so resource versions commit in increasing order and a watcher never skips one."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class LeaseRow(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[float] = mapped_column(Float)


class SnapshotRow(Base):
    __tablename__ = "snapshots"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    workload: Mapped[str] = mapped_column(String(64), index=True)
    instance: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(64), index=True)
    phase: Mapped[str] = mapped_column(String(16))
    deleting: Mapped[bool]
    reason: Mapped[str] = mapped_column(String(256))
    message: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    resource_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
