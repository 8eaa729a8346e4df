"""A riklet's node network: bridge, per-instance namespaces and veths, IPAM and host ports."""

from __future__ import annotations

from rik.network._errors import NetworkError
from rik.network._node import Attachment, NodeNetwork

__all__ = ["Attachment", "NetworkError", "NodeNetwork"]
