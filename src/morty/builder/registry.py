"""Pushing images to the registry (with a readable error when the registry cannot store them) and removing
function images from it once their function is deleted."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import Any

import httpx

from morty.builder._tools import BuildError, LogSink, discard, run

PROBE_TIMEOUT = 10.0


async def push(argv: Sequence[str], reference: str, log: LogSink, *, what: str, tls_verify: bool = False) -> str:
    """Run the `skopeo copy` in `argv` that pushes to `reference`. When the registry answers a server error (a
    registry whose storage is full answers 500 to every upload, and skopeo says no more than that), the
    `BuildError` says what the registry reports instead, e.g. that its storage has no space left."""
    try:
        return await run(argv, log, what=what, timeout=600)
    except BuildError as exc:
        if "HTTP status: 5" not in exc.message:
            raise
        problem = await registry_problem(reference, tls_verify=tls_verify)
        if problem is None:
            raise
        raise BuildError(f"{what}: the registry could not store the image: {problem}") from None


async def registry_problem(reference: str, *, tls_verify: bool = False) -> str | None:
    """What the registry of `reference` (`host/repo:tag`) reports when asked to start an upload, if it
    refuses; None if it accepts (the upload is cancelled at once) or cannot be asked."""
    host, _, path = reference.partition("/")
    repository = path.split("@", 1)[0].rsplit(":", 1)[0]
    base = f"{'https' if tls_verify else 'http'}://{host}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=PROBE_TIMEOUT, trust_env=False) as client:
            started = await client.post(f"/v2/{repository}/blobs/uploads/")
            if started.is_success:
                if location := started.headers.get("location"):
                    await client.delete(location)
                return None
    except httpx.HTTPError:
        return None
    return f"{host} answered {started.status_code}: {_reported(started)}"


def _reported(response: httpx.Response) -> str:
    """The registry's error (distribution's JSON `errors`), with the storage's OS error named."""
    try:
        errors: list[dict[str, Any]] = response.json()["errors"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase
    return "; ".join(_reason(error) for error in errors) or response.reason_phrase


def _reason(error: dict[str, Any]) -> str:
    detail = error.get("detail")
    enclosed = detail.get("Enclosed") if isinstance(detail, dict) else None
    if not isinstance(enclosed, dict):
        enclosed = {}
    code, where = enclosed.get("Err"), f"{enclosed.get('Op', '?')} {enclosed.get('Path', '?')}"
    if code == errno.ENOSPC:
        return f"no space left on its storage ({os.strerror(code)}: {where})"
    if isinstance(code, int):
        return f"its storage failed ({os.strerror(code)}: {where})"
    return str(error.get("message") or error.get("code") or "an error it did not name")


async def delete_image(image: str, digest: str, *, tls_verify: bool = False) -> None:
    """Delete the manifest `digest` of `image` (a `host/repo:tag` reference); its blobs go at the registry's
    next garbage collection. Raises `BuildError` if the registry refuses."""
    repository = image.split("@", 1)[0]
    last = repository.rsplit("/", 1)
    if ":" in last[-1]:
        repository = repository.rsplit(":", 1)[0]
    await run(
        ["skopeo", "delete", f"--tls-verify={str(tls_verify).lower()}", f"docker://{repository}@{digest}"],
        discard,
        what=f"deleting {repository}@{digest}",
        timeout=60,
    )


__all__ = ["BuildError", "delete_image", "push", "registry_problem"]
