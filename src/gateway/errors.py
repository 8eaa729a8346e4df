"""The gateway's exception tree; the management API maps each class to one status code.

GatewayError
├── NotFound        404: the named object does not exist
├── Conflict        409: the change contradicts another object (a service still used by a route)
└── InvalidReference 422: a field names an object that does not exist (a route's `service`)
"""

from __future__ import annotations


class GatewayError(Exception):
    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(GatewayError):
    status = 404


class Conflict(GatewayError):
    status = 409


class InvalidReference(GatewayError):
    status = 422
