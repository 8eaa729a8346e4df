"""The controller's exceptions. Each maps to one HTTP status in `api.errors`.

RikError
 ├── NotFound          404
 ├── Conflict          409
 ├── Invalid           422
 └── Gone              410  (a watch asked for history that was compacted away)
"""

from __future__ import annotations


class RikError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RikError):
    status_code = 404


class Conflict(RikError):
    status_code = 409


class Invalid(RikError):
    status_code = 422


class Gone(RikError):
    status_code = 410
