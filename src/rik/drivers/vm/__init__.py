"""The `vm` runtime driver: OCI images booted as QEMU microvms, with pause/resume and snapshot/restore."""

from __future__ import annotations

from rik.drivers.vm._assets import GuestAssets, GuestKernel
from rik.drivers.vm._driver import VMDriver

__all__ = ["GuestAssets", "GuestKernel", "VMDriver"]
