"""Image store: reference parsing (unit) and pull/unpack/garbage collection of a local OCI layout, and
the size limit: least recently used eviction of images nothing uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from rik.diskusage import tree_bytes
from rik.drivers.base import DriverError, InstanceRequest
from rik.images import ImageStore, parse_reference
from rik.images._store import _choose_victims, _Usage
from rik.model import PortSpec, WorkloadSpec
from rik.riklet.agent import Agent, RikletSettings
from rik.riklet.records import InstanceRecord
from tests.support.http import http_get

from .conftest import INDEX_HTML, Node, build_busybox_image, derive_image


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


# Size limit: choosing victims (unit) ---------------------------------------------------------------------


def _usage(bundles: dict[str, tuple[int, int]], blobs: dict[str, int], references: dict[str, set[str]]) -> _Usage:
    """`bundles`: digest -> (bytes, last used)."""
    return _Usage(
        bundles={d: size for d, (size, _) in bundles.items()},
        last_used={d: used for d, (_, used) in bundles.items()},
        blobs=blobs,
        references=references,
    )


def test_victims_are_least_recently_used_first_and_stop_once_it_fits() -> None:
    usage = _usage(
        {"a": (100, 3), "b": (100, 1), "c": (100, 2)},
        {"a": 10, "b": 10, "c": 10},
        {"a": {"a"}, "b": {"b"}, "c": {"c"}},
    )
    assert usage.total == 330
    assert _choose_victims(usage, set(), 330) == []
    assert _choose_victims(usage, set(), 329) == ["b"]
    assert _choose_victims(usage, set(), 220) == ["b"]
    assert _choose_victims(usage, set(), 219) == ["b", "c"]
    assert _choose_victims(usage, {"b"}, 219) == ["c", "a"]
    assert _choose_victims(usage, {"a", "b", "c"}, 0) == []


def test_a_blob_shared_with_a_kept_image_does_not_count_as_freed() -> None:
    # "a" and "b" share a 1000-byte layer: evicting "b" alone frees only its bundle and its own blob.
    usage = _usage(
        {"a": (100, 2), "b": (100, 1)},
        {"a": 10, "b": 10, "layer": 1000},
        {"a": {"a", "layer"}, "b": {"b", "layer"}},
    )
    assert usage.total == 1220
    assert _choose_victims(usage, set(), 1110) == ["b"]
    assert _choose_victims(usage, set(), 1109) == ["b", "a"]
    assert _choose_victims(usage, {"a"}, 0) == ["b"]


def test_garbage_tags_count_as_freed_before_any_eviction() -> None:
    # "old" is tagged but has no bundle and no lease: the layout collection drops it anyway.
    usage = _usage({"a": (100, 1)}, {"a": 10, "old": 500}, {"a": {"a"}, "old": {"old"}})
    assert _choose_victims(usage, set(), 110) == []
    assert _choose_victims(usage, {"old"}, 110) == ["a"]  # leased: its blobs stay


# Size limit: a real store --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three images sharing the busybox layer, each with one more layer of its own (256 KiB of noise)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = build_busybox_image(tmp_path_factory.mktemp("variants"))
    return {name: derive_image(base, name, {f"data/{name}.bin": os.urandom(256 * 1024)}) for name in "abc"}


def _layers(store: ImageStore, digest: str) -> list[str]:
    manifest = json.loads((store.layout / "blobs" / "sha256" / digest[7:]).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def _blobs(store: ImageStore) -> set[str]:
    return {f"sha256:{p.name}" for p in (store.layout / "blobs" / "sha256").iterdir()}


def _on_disk(store: ImageStore) -> int:
    """The store's size measured independently of its own bookkeeping."""
    return tree_bytes(store.layout) + tree_bytes(store.bundles)


@pytest.mark.e2e
async def test_over_the_limit_the_least_recently_used_image_goes_and_shared_layers_stay(
    tmp_path: Path, variants: dict[str, str]
) -> None:
    store = ImageStore(tmp_path / "store")
    a, b, c = [await store.pull(variants[name]) for name in "abc"]
    await store.pull(variants["a"])  # a cache hit counts as a use: "b" is now the least recently used
    shared, b_own = _layers(store, b.digest)
    assert _layers(store, a.digest)[0] == shared == _layers(store, c.digest)[0]
    before = await store.usage()
    assert before == _on_disk(store)

    assert (await store.trim()).evicted == []  # no limit
    store.limit_bytes = before - 1
    result = await store.trim()

    assert result.evicted == [b.digest]
    assert store.cached_digests() == {a.digest, c.digest}
    blobs = _blobs(store)
    assert b_own not in blobs and b.digest not in blobs
    assert {shared, a.digest, c.digest} <= blobs  # the layer a and c still use survives
    assert result.usage_bytes == await store.usage() == _on_disk(store) <= store.limit_bytes
    again = await store.pull(variants["c"])  # what is kept still works from the cache
    assert (again.rootfs / "data" / "c.bin").stat().st_size == 256 * 1024

    store.limit_bytes = 0
    result = await store.trim()
    assert result.evicted == [a.digest, c.digest]
    assert store.cached_digests() == set() and _blobs(store) == set()


@pytest.mark.e2e
async def test_leased_and_pinned_images_are_never_evicted(tmp_path: Path, variants: dict[str, str]) -> None:
    store = ImageStore(tmp_path / "store", limit_bytes=0)
    pinned: set[str] = set()
    store.add_pins(lambda: set(pinned))
    a, b, c = [await store.pull(variants[name]) for name in "abc"]
    pinned.add(c.digest)

    async with store.lease(variants["b"]) as leased:
        assert leased.digest == b.digest
        result = await store.trim()
        assert result.evicted == [a.digest]
        assert store.cached_digests() == {b.digest, c.digest}
        assert {*_layers(store, b.digest), *_layers(store, c.digest)} <= _blobs(store)
        assert (leased.rootfs / "data" / "b.bin").is_file()
        assert result.usage_bytes == _on_disk(store) > store.limit_bytes  # over the limit, all in use

    assert (await store.trim()).evicted == [b.digest]
    pinned.clear()
    assert (await store.trim()).evicted == [c.digest]
    assert (await store.trim()).usage_bytes == _on_disk(store) <= 4096 * 8  # an empty layout remains


@pytest.mark.e2e
async def test_a_lease_ending_requests_a_trim(tmp_path: Path, variants: dict[str, str]) -> None:
    store = ImageStore(tmp_path / "store")
    requested = asyncio.create_task(store.trim_requested())
    async with store.lease(variants["a"]):
        await asyncio.sleep(0)
        assert not requested.done()
    await asyncio.wait_for(requested, 5)


@pytest.mark.e2e
async def test_instance_records_pin_their_container_image(tmp_path: Path, variants: dict[str, str]) -> None:
    store = ImageStore(tmp_path / "store", limit_bytes=0)
    settings = RikletSettings(
        name="n", address="127.0.0.1", riklet_url="", data_dir=tmp_path / "riklet", cpu=1, memory=1
    )
    agent = Agent(settings, cast(Any, None), cast(Any, None), store)
    a, b = await store.pull(variants["a"]), await store.pull(variants["b"])
    agent.records.save(InstanceRecord("one", "container", "w", {"digest": a.digest}))
    agent.records.save(InstanceRecord("two", "vm", "w", {"digest": b.digest}))  # a VM no longer needs it

    assert (await store.trim()).evicted == [b.digest]
    agent.records.remove("one")
    assert (await store.trim()).evicted == [a.digest]


@pytest.mark.e2e
async def test_a_container_keeps_its_image_from_pull_to_destroy(node: Node, variants: dict[str, str]) -> None:
    """Trims at every step of a start (after the pull, after the instance directory is written, once
    running) and while it runs, with a limit of 0: the container's lower layer must stay throughout."""
    node.images.limit_bytes = 0
    other = await node.images.pull(variants["b"])
    steps: list[str] = []

    async def progress(reason: str, message: str) -> None:
        steps.append(reason)
        if reason in ("Creating", "Starting"):  # not while the store reports from under its own locks
            await node.images.trim()

    spec = WorkloadSpec(image=variants["a"], ports=[PortSpec(port=80)])
    handle = await node.driver.start(InstanceRequest(id="imagegc-1", workload="w", spec=spec), progress)
    node.handles.append(handle)
    digest = handle.state["digest"]
    assert {"Creating", "Starting"} <= set(steps)
    assert other.digest not in node.images.cached_digests()  # the unused image went at the first trim

    assert (await node.images.trim()).evicted == []
    assert node.images.cached_digests() == {digest}
    assert node.driver.images_in_use() == {digest}
    assert await http_get(f"http://{handle.address}:80/") == (200, INDEX_HTML)

    await node.driver.destroy(handle)
    node.handles.remove(handle)
    assert (await node.images.trim()).evicted == [digest]


@pytest.mark.e2e
async def test_the_riklet_trims_in_its_own_task_when_asked_and_exports_metrics(
    tmp_path: Path, variants: dict[str, str]
) -> None:
    store = ImageStore(tmp_path / "store", limit_bytes=0)
    settings = RikletSettings(
        name="n", address="127.0.0.1", riklet_url="", data_dir=tmp_path / "riklet", cpu=1, memory=1
    )
    agent = Agent(settings, cast(Any, None), cast(Any, None), store)
    evictions = REGISTRY.get_sample_value("riklet_image_evictions_total") or 0.0
    async with store.lease(variants["a"]) as image:
        loop = asyncio.create_task(agent._image_trim_loop(store))
        # The first trim spares the leased image; ending the lease asks for another, which evicts it.
        await _until(lambda: REGISTRY.get_sample_value("riklet_image_store_bytes") == _on_disk(store))
        assert store.cached_digests() == {image.digest}
    try:
        await _until(lambda: store.cached_digests() == set())
        await _until(lambda: REGISTRY.get_sample_value("riklet_image_evictions_total") == evictions + 1)
        await _until(lambda: REGISTRY.get_sample_value("riklet_image_store_bytes") == _on_disk(store))
        assert REGISTRY.get_sample_value("riklet_image_store_limit_bytes") == 0
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop


async def _until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for `condition` (checked after each turn of the event loop), failing after `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.01)
