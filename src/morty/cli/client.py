"""The CLI's HTTP client: one method per call, errors turned into `CliError` with one readable line."""

from __future__ import annotations

from typing import Any

import httpx

from morty.cli.config import Context


class CliError(Exception):
    """Ends the command with `message` on stderr and exit `code` (1 refused, 2 bad input, 3 unreachable)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Api:
    def __init__(self, context: Context, *, timeout: float = 300) -> None:
        self.context = context
        headers = {"Authorization": f"Bearer {context.token}"} if context.token else {}
        self.http = httpx.Client(base_url=context.url, headers=headers, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise CliError(f"{self.context.url} did not answer in time ({method} {path})", 3) from None
        except httpx.TransportError as exc:
            raise CliError(f"cannot reach {self.context.url}: {exc.__class__.__name__}: {exc}", 3) from None
        if response.status_code == 401:
            hint = f"check the token of context {self.context.name} (`morty config set-context`)"
            raise CliError(f"{_message(response)}: {hint}", 1)
        if response.status_code >= 400:
            raise CliError(_message(response), 1)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body, **kwargs)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, json=body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text.strip()[:300] or response.reason_phrase}"
    if isinstance(body, dict) and "error" in body:
        return f"{response.status_code}: {body['error']}"
    if isinstance(body, dict) and "detail" in body:
        return f"{response.status_code}: {body['detail']}"
    return f"{response.status_code}: {str(body)[:300]}"
