"""Morty's SQL schema (SQLAlchemy 2 declarative). The Alembic migrations in `migrations/` create it.

Every row of a function hangs off `functions.id` with ON DELETE CASCADE; the store also deletes
them explicitly, so the cascade is a safety net, not the mechanism."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(32)
BIGINT = BigInteger().with_variant(Integer(), "sqlite")
"""SQLite only auto-increments an INTEGER PRIMARY KEY."""


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


def _function_fk() -> Any:
    return ForeignKey("functions.id", ondelete="CASCADE")


class FunctionRow(Base):
    __tablename__ = "functions"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    runtime: Mapped[str] = mapped_column(String(64))
    isolation: Mapped[str] = mapped_column(String(16))
    env: Mapped[dict[str, Any]]
    memory_mib: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    timeout_seconds: Mapped[int] = mapped_column(Integer)
    min_instances: Mapped[int] = mapped_column(Integer)
    max_instances: Mapped[int] = mapped_column(Integer)
    concurrency: Mapped[int] = mapped_column(Integer)
    idle_timeout_seconds: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class SecretRow(Base):
    __tablename__ = "secrets"

    function_id: Mapped[str] = mapped_column(ID, _function_fk(), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class VersionRow(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("function_id", "version"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    function_id: Mapped[str] = mapped_column(ID, _function_fk(), index=True)
    version: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str] = mapped_column(Text)
    code_key: Mapped[str] = mapped_column(String(512), unique=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    image: Mapped[str | None] = mapped_column(String(512))
    digest: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    uploaded_at: Mapped[datetime | None]
    ready_at: Mapped[datetime | None]
    deployment_key: Mapped[str | None] = mapped_column(String(63), unique=True)
    """The version's name in the orchestrator, set when its deployment starts."""


class AliasRow(Base):
    __tablename__ = "aliases"

    function_id: Mapped[str] = mapped_column(ID, _function_fk(), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version_id: Mapped[str] = mapped_column(ID, ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class BuildRow(Base):
    __tablename__ = "builds"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    function_id: Mapped[str] = mapped_column(ID, _function_fk(), index=True)
    version_id: Mapped[str] = mapped_column(ID, ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(Text)
    log: Mapped[str] = mapped_column(Text)
    image: Mapped[str | None] = mapped_column(String(512))
    digest: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class InvocationRow(Base):
    __tablename__ = "invocations"
    __table_args__ = (Index("ix_invocations_function_started", "function_id", "started_at", "seq"),)

    seq: Mapped[int] = mapped_column(BIGINT, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    function_id: Mapped[str] = mapped_column(ID, _function_fk())
    version: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    queue_ms: Mapped[float] = mapped_column(Float)
    provision_ms: Mapped[float] = mapped_column(Float)
    upstream_ms: Mapped[float] = mapped_column(Float)
    path: Mapped[str] = mapped_column(String(16))
    instance: Mapped[str | None] = mapped_column(String(128))
    bytes_in: Mapped[int] = mapped_column(BigInteger)
    bytes_out: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime]


class InstanceRow(Base):
    """An instance Morty asked the orchestrator for; `last_active_at` drives the idle timeout."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    function_id: Mapped[str] = mapped_column(ID, _function_fk(), index=True)
    version_id: Mapped[str] = mapped_column(ID, ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    control_host: Mapped[str | None] = mapped_column(String(255))
    control_port: Mapped[int | None] = mapped_column(Integer)
    logs_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """The last log record collected from the instance's alpha."""
    start_path: Mapped[str] = mapped_column(String(16))
    provision_ms: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime]
    last_active_at: Mapped[datetime]


class LogRow(Base):
    """A line an instance's runtime printed (collected from alpha), attributed to an invocation if it could be."""

    __tablename__ = "invocation_logs"
    __table_args__ = (Index("ix_invocation_logs_function_ts", "function_id", "ts", "seq"),)

    seq: Mapped[int] = mapped_column(BIGINT, primary_key=True, autoincrement=True)
    function_id: Mapped[str] = mapped_column(ID, _function_fk())
    instance: Mapped[str] = mapped_column(String(128))
    invocation: Mapped[str | None] = mapped_column(String(128), index=True)
    ts: Mapped[datetime]
    stream: Mapped[str] = mapped_column(String(16))
    line: Mapped[str] = mapped_column(Text)
