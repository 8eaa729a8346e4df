"""SQL tables: one row per configuration object, an append-only change feed, and the resource-version counter."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RV_COUNTER = "resource_version"


class Base(DeclarativeBase):
    pass


class ObjectRow(Base):
    """A route, a service or a target (`name` is `service/address` for a target)."""

    __tablename__ = "gateway_objects"
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(400), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    resource_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ChangeRow(Base):
    """One committed change; `resource_version` orders the feed and resumes a watch."""

    __tablename__ = "gateway_changes"
    resource_version: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(400))
    op: Mapped[str] = mapped_column(String(8))
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CounterRow(Base):
    __tablename__ = "gateway_counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
