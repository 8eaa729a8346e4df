"""Morty APIs' exceptions. Each maps to one HTTP status in `routes.errors`, with a body
`{"error": message, "detail": ...}`; `detail` lists `{"field", "message"}` items for invalid input.

MortyError
 ├── Unauthorized  401
 ├── Forbidden     403
 ├── NotFound      404
 ├── Conflict      409
 ├── TooLarge      413
 ├── Invalid       422
 ├── Busy          429
 ├── Unavailable   503
 └── NoSpace       507
"""

from __future__ import annotations

from typing import Any


class MortyError(Exception):
    status_code = 500

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class Unauthorized(MortyError):
    status_code = 401


class Forbidden(MortyError):
    status_code = 403


class NotFound(MortyError):
    status_code = 404


class Conflict(MortyError):
    status_code = 409


class TooLarge(MortyError):
    status_code = 413


class Invalid(MortyError):
    status_code = 422

    @classmethod
    def field(cls, field: str, message: str) -> Invalid:
        return cls(f"invalid request: {field}: {message}", [{"field": field, "message": message}])


class Busy(MortyError):
    """A limit of the function is reached (e.g. `max_instances`); retrying later may succeed."""

    status_code = 429


class Unavailable(MortyError):
    status_code = 503


class NoSpace(MortyError):
    """The data directory's file system is full (or over quota): nothing was written; retry once space returns."""

    status_code = 507
