"""Removing function images from the registry once their function is deleted."""

from __future__ import annotations

from morty.builder._tools import BuildError, discard, run


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


__all__ = ["BuildError", "delete_image"]
