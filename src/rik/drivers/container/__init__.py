"""The `container` runtime driver: OCI containers run by runc or crun."""

from __future__ import annotations

from rik.drivers.container._driver import ContainerDriver

__all__ = ["ContainerDriver"]
