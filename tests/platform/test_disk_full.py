"""Disk full, in Morty APIs' data directory and in the registry's storage (each a small tmpfs here).

The data directory: an upload is refused with 507 and a message, not a 500 and a traceback; nothing
half-written is left or recorded; reads and warm invocations go on; once space returns the same upload URL
works and the version builds and deploys.

The registry (an instance of its own, as `scripts/registry` runs it): a push through the builder's push code
fails at once with an error naming the lack of space, not skopeo's bare "500 Internal Server Error"; images
pushed before still pull with every digest verified; once space returns the same push succeeds."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from morty.builder._tools import BuildError, discard
from morty.builder.base import BaseImage, push_base_image
from tests.support.images import manifest_digest, push_image
from tests.support.registry import start_registry, stop_registry

from ._platform import Platform, _tmpfs
from ._record import record
from .conftest import Deployed, archive, deploy

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]
REGISTRY_SIZE = "160m"
"""Room for the runtime's base image (~65 MB of layers) once space returns."""
PUSH_FAILS_WITHIN = 30.0


@contextlib.contextmanager
def _full(directory: Path) -> Iterator[None]:
    """Take every free block of the file system of `directory`, until the block is left."""
    filler = directory / "filler"
    with filler.open("wb") as out:
        stat = os.statvfs(directory)
        os.posix_fallocate(out.fileno(), 0, stat.f_bavail * stat.f_frsize)
        with contextlib.suppress(OSError):  # the last partial block
            out.write(b"\0" * 65536)
            out.flush()
    try:
        probe = directory / "probe"
        with pytest.raises(OSError) as raised:
            probe.write_bytes(b"\0" * 65536)
        assert raised.value.errno == errno.ENOSPC
        probe.unlink(missing_ok=True)
        yield
    finally:
        filler.unlink()


async def test_a_full_data_directory_is_a_clear_error_and_recovers(platform: Platform, deployed: Deployed) -> None:
    log_before = platform.morty.proc.log_path.read_text().count("Traceback")
    async with platform.api() as api, httpx.AsyncClient(timeout=60, trust_env=False) as plain:
        created = await api.post(
            "/v1/functions", json={"name": "disk", "runtime": "python3.11", "isolation": "container"}
        )
        assert created.status_code == 201, created.text
        version = await api.post("/v1/functions/disk/versions", json={"version": "1.0.0"})
        upload_url = version.json()["upload"]["url"]
        code = platform.data_dir / "code"
        stored_before = sorted(p.relative_to(code) for p in code.rglob("*") if p.is_file())

        with _full(platform.data_dir):
            refused = await plain.put(upload_url, content=archive())
            assert refused.status_code == 507, refused.text
            assert "no space left" in refused.json()["error"], refused.text
            # Nothing recorded, nothing half-written; the rest of the API and warm traffic go on.
            status = (await api.get("/v1/functions/disk/versions/1.0.0")).json()["status"]
            assert status == "awaiting_upload"
            assert sorted(p.relative_to(code) for p in code.rglob("*") if p.is_file()) == stored_before
            assert (await api.get("/v1/functions")).status_code == 200
            for path in deployed.paths:
                assert (await plain.get(path)).status_code == 200

        # Space again: the same URL takes the upload; the version builds, deploys and serves.
        accepted = await plain.put(upload_url, content=archive())
        assert accepted.status_code == 200, accepted.text
        # (Not invoked: a new image is a 250 MB unpack on a node, time the quick form does not have.)
        await deploy(api, "disk", "1.0.0", upload=False)
        assert (await api.delete("/v1/functions/disk")).status_code == 200
    assert platform.morty.proc.log_path.read_text().count("Traceback") == log_before, platform.morty.proc.tail(40)


def _pulled_digest(reference: str, into: Path) -> str:
    """Pull `reference` (skopeo verifies every blob's digest as it copies); its manifest digest."""
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{reference}", f"oci:{into}:pulled"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    return manifest_digest(f"oci:{into}:pulled")


async def test_a_full_registry_is_a_clear_push_error_and_recovers(
    tmp_path: Path, base: BaseImage, e2e_image: str, full: bool
) -> None:
    with _tmpfs(tmp_path / "registry", REGISTRY_SIZE) as storage:
        registry = start_registry(storage)
        try:
            earlier = push_image(e2e_image, registry.address, "kept/httpd:1")
            with _full(storage):
                started = time.monotonic()
                with pytest.raises(BuildError) as refused:
                    await push_base_image(base, registry.address, discard)
                failed_after = time.monotonic() - started
                message = refused.value.message
                assert "no space left on its storage" in message, message
                assert "Traceback" not in message and failed_after < PUSH_FAILS_WITHIN, (failed_after, message)
                # What was pushed before is intact.
                assert _pulled_digest(earlier, tmp_path / "during") == manifest_digest(e2e_image)
            pushed = await push_base_image(base, registry.address, discard)
            assert _pulled_digest(pushed, tmp_path / "after") == manifest_digest(base.oci_ref)
            assert _pulled_digest(earlier, tmp_path / "after") == manifest_digest(e2e_image)
        finally:
            stop_registry(registry)
    print(f"registry full: push refused after {failed_after:.1f}s: {message}")
    record(
        "registry_full",
        "The registry's storage full",
        full=full,
        figures={
            "push refused after, s": round(failed_after, 2),
            "the error": message.partition("could not store the image: ")[2].split(" (", 1)[0],
            "earlier image pulled, digests verified": "yes",
            "same push once space returned": "succeeded",
        },
    )
