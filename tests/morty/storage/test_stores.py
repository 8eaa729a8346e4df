"""The local code store's object handling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from morty.storage.local import LocalCodeStore, TooLarge
from morty.storage.signing import UploadSigner


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_local_store_stages_publishes_and_deletes(tmp_path: Path) -> None:
    store = LocalCodeStore(tmp_path / "code", UploadSigner(b"k" * 32), "http://morty.test:7800/")
    target = store.upload_target("f1/v1.archive", expires_in=60, max_bytes=10)
    assert target.url.startswith("http://morty.test:7800/v1/uploads/") and target.method == "PUT"
    assert store.signer.verify(target.url.rsplit("/", 1)[1]).key == "f1/v1.archive"

    with pytest.raises(TooLarge):
        await store.receive(chunks(b"12345", b"678901"), 10)
    assert list((tmp_path / "code" / ".staging").iterdir()) == [], "a refused upload leaves nothing"

    staged = await store.receive(chunks(b"12345", b"678"), 10)
    assert staged.size == 8
    store.publish(staged, "f1/v1.archive")
    assert (await store.stat("f1/v1.archive")) is not None
    await store.download("f1/v1.archive", tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"12345678"
    await store.delete("f1/v1.archive")
    await store.delete("f1/v1.archive")
    assert await store.stat("f1/v1.archive") is None
    assert not (tmp_path / "code" / "f1").exists(), "emptied directories go too"

    for bad in ("../etc/passwd", "/abs", "a/../b", "A/b", "a//b", ""):
        with pytest.raises(ValueError, match="invalid object key"):
            store.path(bad)
