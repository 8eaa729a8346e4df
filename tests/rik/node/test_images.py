"""Image store: reference parsing (unit) and pull/unpack/garbage collection of a local OCI layout."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rik.drivers.base import DriverError
from rik.images import ImageStore, parse_reference


@pytest.mark.parametrize(
    ("reference", "source", "tls_verify", "pinned"),
    [
        ("oci:/srv/layout:v1", "oci:/srv/layout:v1", True, False),
        ("busybox", "docker://docker.io/library/busybox:latest", True, False),
        ("ghcr.io/acme/app:1.2", "docker://ghcr.io/acme/app:1.2", True, False),
        ("127.0.0.1:5000/fn/hello:3", "docker://127.0.0.1:5000/fn/hello:3", False, False),
        ("docker://localhost:5000/x", "docker://localhost:5000/x:latest", False, False),
        ("registry.lan:5000/x@sha256:" + "a" * 64, "docker://registry.lan:5000/x@sha256:" + "a" * 64, False, True),
    ],
)
def test_references_map_to_skopeo_sources(reference: str, source: str, tls_verify: bool, pinned: bool) -> None:
    ref = parse_reference(reference, insecure_registries=["registry.lan:5000"])
    assert (ref.source, ref.tls_verify, ref.pinned) == (source, tls_verify, pinned)


@pytest.mark.parametrize("reference", ["", "a b", "oci:relative/path:t", "Upper/Case", "x:bad tag", "ftp://x/y"])
def test_bad_references_are_image_pull_failed(reference: str) -> None:
    with pytest.raises(DriverError) as caught:
        parse_reference(reference)
    assert caught.value.reason == "ImagePullFailed"


@pytest.mark.e2e
async def test_concurrent_pulls_unpack_once_and_read_the_config(tmp_path: Path, image_ref: str) -> None:
    store = ImageStore(tmp_path / "store")
    pulled = await asyncio.gather(*(store.pull(image_ref) for _ in range(4)))

    assert len({p.digest for p in pulled}) == 1
    assert store.cached_digests() == {pulled[0].digest}
    assert sorted(p.name for p in (tmp_path / "store" / "bundles").iterdir()) == [pulled[0].digest[7:]]
    image = pulled[0]
    assert (image.rootfs / "www" / "index.html").is_file()
    assert image.runtime_config.is_file()
    assert image.config.entrypoint == ["/bin/httpd", "-f"]
    assert image.config.cmd == ["-p", "80", "-h", "/www"]
    assert image.config.env["IMAGE_VAR"] == "from-image"
    assert image.config.working_dir == "/www"
    assert image.config.exposed_ports == [(80, "tcp")]


@pytest.mark.e2e
async def test_remove_unused_deletes_bundles_and_blobs(tmp_path: Path, image_ref: str) -> None:
    store = ImageStore(tmp_path / "store")
    image = await store.pull(image_ref)

    assert await store.remove_unused({image.digest}) == set()
    assert image.rootfs.is_dir()

    assert await store.remove_unused(set()) == {image.digest}
    assert not image.bundle.exists()
    assert list((tmp_path / "store" / "layout" / "blobs" / "sha256").iterdir()) == []
    again = await store.pull(image_ref)  # and it can be pulled again
    assert again.digest == image.digest and again.rootfs.is_dir()


@pytest.mark.e2e
async def test_missing_image_names_the_cause(tmp_path: Path, image_ref: str) -> None:
    store = ImageStore(tmp_path / "store")
    layout = image_ref.rsplit(":", 1)[0]
    with pytest.raises(DriverError) as caught:
        await store.pull(f"{layout}:no-such-tag")
    assert caught.value.reason == "ImagePullFailed"
    assert "no-such-tag" in caught.value.message


@pytest.mark.e2e
async def test_pull_from_a_plain_http_registry(tmp_path: Path, image_ref: str, registry: str) -> None:
    target = f"{registry}/rik-node-test/busybox:1"
    push = await asyncio.create_subprocess_exec(
        "skopeo", "copy", "--quiet", "--dest-tls-verify=false", image_ref, f"docker://{target}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await push.communicate()
    assert push.returncode == 0, output.decode()

    store = ImageStore(tmp_path / "store")
    from_registry = await store.pull(target)
    from_layout = await store.pull(image_ref)

    assert from_registry.digest == from_layout.digest  # same manifest, one bundle
    assert store.cached_digests() == {from_registry.digest}
    assert from_registry.config.entrypoint == ["/bin/httpd", "-f"]
    with pytest.raises(DriverError) as caught:
        await store.pull(f"{registry}/rik-node-test/missing:1")
    assert caught.value.reason == "ImagePullFailed"
