"""Errors of the node network."""

from __future__ import annotations


class NetworkError(Exception):
    """A network operation failed. `reason` is a short CamelCase word (as in `DriverError`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
