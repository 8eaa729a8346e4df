"""The node's image store: one shared OCI layout (blobs deduplicated) and one unpacked bundle per digest.

Layout on disk::

    <root>/layout/              OCI image layout written by `skopeo copy`; one tag per pulled reference
    <root>/bundles/<hex>/       `umoci unpack` of manifest sha256:<hex>: rootfs/ + config.json
    <root>/locks/               lock files (layout writes, unpack per digest)

With a byte limit, `trim()` evicts least recently used images (by the bundle directory's mtime, touched on
every pull) that are neither leased nor pinned until the store fits. An image is in use while

- a `lease()` holds it: from the copy into the layout until the caller is done (a driver holds one across
  a start, so nothing is removed between the pull and the moment the instance pins the image itself);
- a pin source registered with `add_pins` names its digest (the container driver names the lower layer
  of every container it has on disk; the riklet the digests in its instance records).

A bundle is removed under its digest lock after checking, in this order, that no lease holds it and that
no pin source names it: a start that releases its lease has pinned the image before (so the check sees
the pin), and one that takes a lease after the check must unpack under the same lock (so it unpacks
again). Tags whose bundle is gone and that no lease holds are then dropped from the layout and
`umoci gc` deletes the blobs that no remaining tag references; blobs shared with a kept image stay.
Leases are per process: two processes must not trim one store.

`umoci unpack` needs an image layout and a tag. Each unpack gets a private throw-away layout whose
`index.json` names only the wanted manifest and whose `blobs` is a symlink to the shared blobs, so an
unpack (seconds for a big image) never holds the shared layout's lock and never reads an `index.json`
that a concurrent pull is rewriting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rik.diskusage import file_bytes, tree_bytes
from rik.drivers.base import DriverError, ProgressCallback
from rik.images._config import ImageConfig
from rik.images._locks import PathLocks
from rik.images._process import run_command
from rik.images._reference import ImageReference, parse_reference

logger = logging.getLogger(__name__)

_REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_LOCK = "layout"
_EVICTING = ".evict-"

#: Returns digests in use beyond any lease; called in a worker thread by every trim.
PinSource = Callable[[], set[str]]


@dataclass(frozen=True)
class UnpackedImage:
    """A pulled image, unpacked and ready to be used as a container's read-only lower layer."""

    reference: str
    digest: str
    bundle: Path
    config: ImageConfig

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def runtime_config(self) -> Path:
        """umoci's generated OCI runtime `config.json`, a template for each container's own."""
        return self.bundle / "config.json"


@dataclass(frozen=True)
class TrimResult:
    """What one `trim()` did: digests evicted (least recently used first) and the store's size after."""

    evicted: list[str]
    usage_bytes: int
    limit_bytes: int | None


@dataclass
class _Usage:
    """The store's size, per bundle and per blob, and which blobs each tagged manifest references."""

    bundles: dict[str, int]
    last_used: dict[str, int]
    blobs: dict[str, int]
    references: dict[str, set[str]]
    other: int = 0
    total: int = field(init=False)

    def __post_init__(self) -> None:
        self.total = sum(self.bundles.values()) + sum(self.blobs.values()) + self.other


class ImageStore:
    """Pulls images with skopeo into one OCI layout and unpacks each manifest digest once with umoci.

    `limit_bytes` caps the store's size: see the module docstring for `trim()` and what it spares.
    """

    def __init__(
        self,
        root: Path,
        *,
        insecure_registries: Iterable[str] = (),
        pull_timeout: float = 600.0,
        unpack_timeout: float = 1800.0,
        limit_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.layout = root / "layout"
        self.bundles = root / "bundles"
        self._insecure = frozenset(insecure_registries)
        self._pull_timeout = pull_timeout
        self._unpack_timeout = unpack_timeout
        self.limit_bytes = limit_bytes
        self._locks = PathLocks(root / "locks")
        # Digests leased in this process, from the copy into the layout until the lease ends.
        self._leases: Counter[str] = Counter()
        self._pins: list[PinSource] = []
        # Bundles never change once unpacked: their size is measured once (keyed by the directory's inode).
        self._bundle_bytes: dict[str, tuple[int, int]] = {}
        self._trim_lock = asyncio.Lock()
        self._trim_wanted = asyncio.Event()

    # Public API ---------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, reference: str, progress: ProgressCallback | None = None) -> AsyncIterator[UnpackedImage]:
        """Pull `reference` (as `pull`) and keep it from eviction until the block exits.

        A driver holds the lease until its instance pins the image (or no longer needs the bundle). When
        the lease ends a trim is requested (see `trim_requested`): the store may have grown.
        """
        ref = parse_reference(reference, self._insecure)
        digest = await self._copy(ref, _tag_for(reference), progress)
        try:
            config = ImageConfig.from_oci(await asyncio.to_thread(self._read_image_config, digest))
            bundle = await self._unpack(digest, progress)
            await asyncio.to_thread(os.utime, bundle)  # last use, for least-recently-used eviction
            yield UnpackedImage(reference=reference, digest=digest, bundle=bundle, config=config)
        finally:
            self._release(digest)
            self._trim_wanted.set()

    async def pull(self, reference: str, progress: ProgressCallback | None = None) -> UnpackedImage:
        """Make `reference` available as an unpacked bundle; raise `DriverError("ImagePullFailed")`.

        References pinned by digest are copied only once; tags are re-resolved on every pull (blobs
        already in the layout are not downloaded again) so a moved tag is noticed. No lease is kept: a
        later trim may evict the image unless something pins it (use `lease` to use the bundle).
        """
        async with self.lease(reference, progress) as image:
            return image

    def add_pins(self, source: PinSource) -> None:
        """Register `source`: digests it returns are never evicted (it is called in a worker thread; an
        exception aborts the trim, so a source that cannot tell keeps everything)."""
        self._pins.append(source)

    def leased_digests(self) -> set[str]:
        return {digest for digest, count in self._leases.items() if count > 0}

    def cached_digests(self) -> set[str]:
        """Digests that have an unpacked bundle."""
        if not self.bundles.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in self.bundles.iterdir() if not p.name.startswith(".")}

    async def remove_unused(self, keep: set[str]) -> set[str]:
        """Delete bundles, tags and blobs of every image whose manifest digest is not in `keep`.

        `keep` holds manifest digests (`sha256:…`) of images still in use; leased and pinned images are
        spared as well. Returns the digests removed.
        """
        removed = {digest for digest in sorted(self.cached_digests() - keep) if await self._evict_bundle(digest)}
        removed |= await self._collect_layout()
        if removed:
            logger.info("removed unused images", extra={"digests": sorted(removed)})
        return removed

    # Size limit ---------------------------------------------------------------------------------------

    def request_trim(self) -> None:
        """Ask whoever waits in `trim_requested` for a trim (e.g. after an instance was removed)."""
        self._trim_wanted.set()

    async def trim_requested(self) -> None:
        """Wait until a trim is requested (a lease ended, or `request_trim`) and take the request."""
        await self._trim_wanted.wait()
        self._trim_wanted.clear()

    async def usage(self) -> int:
        """Bytes the layout and the bundles take (4 KiB blocks, hard links once)."""
        return (await asyncio.to_thread(self._measure)).total

    async def trim(self) -> TrimResult:
        """Evict least recently used images in use by nothing until the store fits `limit_bytes`.

        Images in use are never evicted, even over the limit: the store may then stay above it.
        """
        async with self._trim_lock:
            await asyncio.to_thread(self._remove_leftovers)
            usage = await asyncio.to_thread(self._measure)
            if self.limit_bytes is None or usage.total <= self.limit_bytes:
                return TrimResult([], usage.total, self.limit_bytes)
            spared = self.leased_digests() | await self._pinned()
            victims = _choose_victims(usage, spared, self.limit_bytes)
            evicted = [digest for digest in victims if await self._evict_bundle(digest)]
            await self._collect_layout()
            after = (await asyncio.to_thread(self._measure)).total
        if evicted:
            logger.info(
                "evicted images",
                extra={
                    "digests": evicted, "bytes_before": usage.total, "bytes_after": after,
                    "limit_bytes": self.limit_bytes,
                },
            )  # fmt: skip
        if after > self.limit_bytes:
            logger.warning(
                "image store over its limit: the rest is in use",
                extra={"bytes": after, "limit_bytes": self.limit_bytes, "in_use": sorted(spared)},
            )
        return TrimResult(evicted, after, self.limit_bytes)

    async def _pinned(self) -> set[str]:
        def collect() -> set[str]:
            pinned: set[str] = set()
            for source in self._pins:
                pinned |= source()
            return pinned

        return await asyncio.to_thread(collect)

    async def _evict_bundle(self, digest: str) -> bool:
        """Remove `digest`'s bundle unless it is in use; True if removed (or already gone).

        Under the digest lock, leases are checked before pins: see the module docstring for why.
        """
        async with self._locks.hold(_digest_lock(digest)):
            if self._leases[digest] > 0 or digest in await self._pinned():
                return False
            bundle = self.bundles / _hex(digest)
            doomed = self.bundles / f"{_EVICTING}{_hex(digest)}"
            try:
                # Renamed first: a crash halfway through the deletion leaves no half bundle that looks cached.
                await asyncio.to_thread(os.rename, bundle, doomed)
            except FileNotFoundError:
                return True
            await asyncio.to_thread(shutil.rmtree, doomed, True)
            self._bundle_bytes.pop(digest, None)
            return True

    async def _collect_layout(self) -> set[str]:
        """Untag manifests with no bundle that no lease holds, then `umoci gc` unreferenced blobs."""
        async with self._locks.hold(_LAYOUT_LOCK):
            keep = self.cached_digests() | self.leased_digests()
            removed = await asyncio.to_thread(self._untag_except, keep)
            if (self.layout / "index.json").exists():
                result = await run_command("umoci", "gc", "--layout", str(self.layout))
                if not result.ok:
                    logger.warning("umoci gc failed: %s", result.last_error_line())
        return removed

    def _remove_leftovers(self) -> None:
        """Finish evictions a crash interrupted."""
        if self.bundles.is_dir():
            for path in self.bundles.glob(f"{_EVICTING}*"):
                shutil.rmtree(path, True)

    def _measure(self) -> _Usage:
        """The store's usage (blocking: call in a thread)."""
        bundles: dict[str, int] = {}
        last_used: dict[str, int] = {}
        for digest in self.cached_digests():
            with contextlib.suppress(FileNotFoundError):
                st = (self.bundles / _hex(digest)).stat()
                bundles[digest] = self._measure_bundle(digest, st)
                last_used[digest] = st.st_mtime_ns
        blobs: dict[str, int] = {}
        blob_dir = self.layout / "blobs" / "sha256"
        if blob_dir.is_dir():
            for path in blob_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    blobs[f"sha256:{path.name}"] = file_bytes(path.lstat())
        other = tree_bytes(self.layout) - sum(blobs.values()) if self.layout.is_dir() else 0
        references = {digest: self._references(digest) for digest in self._tagged_digests()}
        return _Usage(bundles, last_used, blobs, references, max(other, 0))

    def _measure_bundle(self, digest: str, st: os.stat_result) -> int:
        known = self._bundle_bytes.get(digest)
        if known is not None and known[0] == st.st_ino:
            return known[1]
        size = file_bytes(st) + tree_bytes(self.bundles / _hex(digest))
        self._bundle_bytes[digest] = (st.st_ino, size)
        return size

    def _references(self, digest: str) -> set[str]:
        """The blobs `digest` needs: itself, and its config, layers (and child manifests, for an index)."""
        found = {digest}
        try:
            document = self._blob(digest)
        except (OSError, ValueError, DriverError):
            return found
        for child in [document.get("config"), *document.get("layers", [])]:
            if isinstance(child, dict) and isinstance(child.get("digest"), str):
                found.add(child["digest"])
        for child in document.get("manifests", []):
            if isinstance(child, dict) and isinstance(child.get("digest"), str) and child["digest"] not in found:
                found |= self._references(child["digest"])
        return found

    # Pull ---------------------------------------------------------------------------------------------

    async def _copy(self, ref: ImageReference, tag: str, progress: ProgressCallback | None) -> str:
        async with self._locks.hold(_LAYOUT_LOCK):
            if ref.pinned:
                known = await asyncio.to_thread(self._tagged_digest, tag)
                if known is not None:
                    self._leases[known] += 1
                    return known
            if progress is not None:
                await progress("Pulling", f"pulling {ref.original}")
            argv = ["skopeo", "copy", "--quiet"]
            if ref.is_registry and not ref.tls_verify:
                argv.append("--src-tls-verify=false")
            argv += [ref.source, f"oci:{self.layout}:{tag}"]
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                async with asyncio.timeout(self._pull_timeout):
                    result = await run_command(*argv)
            except TimeoutError:
                raise DriverError(
                    "ImagePullFailed", f"pulling {ref.original} timed out after {self._pull_timeout:.0f} s"
                ) from None
            if not result.ok:
                raise DriverError("ImagePullFailed", f"cannot pull {ref.original}: {result.last_error_line()}")
            digest = await asyncio.to_thread(self._tagged_digest, tag)
            if digest is None:
                raise DriverError("ImagePullFailed", f"{ref.original}: skopeo wrote no manifest")
            # Leased under the layout lock, so garbage collection cannot drop the blobs before unpack.
            self._leases[digest] += 1
            logger.info("pulled image", extra={"reference": ref.original, "digest": digest})
            return digest

    def _release(self, digest: str) -> None:
        """End one lease that `_copy` took for `digest`."""
        self._leases[digest] -= 1
        if self._leases[digest] <= 0:
            del self._leases[digest]

    async def _unpack(self, digest: str, progress: ProgressCallback | None) -> Path:
        bundle = self.bundles / _hex(digest)
        async with self._locks.hold(_digest_lock(digest)):
            if (bundle / "config.json").is_file():
                return bundle
            if progress is not None:
                await progress("Unpacking", f"unpacking {digest}")
            self.bundles.mkdir(parents=True, exist_ok=True)
            work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=".unpack-", dir=self.bundles))
            try:
                await asyncio.to_thread(self._private_layout, work / "layout", digest)
                try:
                    async with asyncio.timeout(self._unpack_timeout):
                        result = await run_command(
                            "umoci",
                            "unpack",
                            "--image",
                            f"{work / 'layout'}:image",
                            str(work / "bundle"),
                        )
                except TimeoutError:
                    raise DriverError("ImagePullFailed", f"unpacking {digest} timed out") from None
                if not result.ok:
                    raise DriverError("ImagePullFailed", f"cannot unpack {digest}: {result.last_error_line()}")
                os.rename(work / "bundle", bundle)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)
            logger.info("unpacked image", extra={"digest": digest, "bundle": str(bundle)})
            return bundle

    # Layout files (blocking; called through asyncio.to_thread) ------------------------------------------

    def _read_index(self) -> dict[str, Any]:
        try:
            document: dict[str, Any] = json.loads((self.layout / "index.json").read_text())
        except FileNotFoundError:
            return {"schemaVersion": 2, "manifests": []}
        return document

    def _tagged_digest(self, tag: str) -> str | None:
        for entry in self._read_index().get("manifests", []):
            if (entry.get("annotations") or {}).get(_REF_NAME) == tag:
                return str(entry["digest"])
        return None

    def _tagged_digests(self) -> set[str]:
        return {str(entry["digest"]) for entry in self._read_index().get("manifests", []) if "digest" in entry}

    def _blob(self, digest: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.layout / "blobs" / "sha256" / _hex(digest)).read_text())
        return document

    def _read_image_config(self, digest: str) -> dict[str, Any]:
        manifest = self._blob(digest)
        try:
            return self._blob(manifest["config"]["digest"])
        except (KeyError, TypeError) as exc:
            raise DriverError("ImagePullFailed", f"manifest {digest} has no image config") from exc

    def _private_layout(self, path: Path, digest: str) -> None:
        manifest_path = self.layout / "blobs" / "sha256" / _hex(digest)
        media_type = json.loads(manifest_path.read_text()).get(
            "mediaType", "application/vnd.oci.image.manifest.v1+json"
        )
        path.mkdir(parents=True)
        (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        entry = {
            "mediaType": media_type,
            "digest": digest,
            "size": manifest_path.stat().st_size,
            "annotations": {_REF_NAME: "image"},
        }
        (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        (path / "blobs").symlink_to((self.layout / "blobs").resolve())

    def _untag_except(self, keep: set[str]) -> set[str]:
        index = self._read_index()
        manifests = index.get("manifests", [])
        kept = [m for m in manifests if m.get("digest") in keep]
        if len(kept) == len(manifests):
            return set()
        index["manifests"] = kept
        tmp = self.layout / "index.json.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.layout / "index.json")
        return {str(m.get("digest")) for m in manifests if m not in kept}


def _tag_for(reference: str) -> str:
    """A tag in the shared layout for `reference` (OCI ref names allow only a few characters)."""
    return "ref-" + hashlib.sha256(reference.encode()).hexdigest()[:24]


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise DriverError("ImagePullFailed", f"unsupported digest {digest!r}")
    return value


def _digest_lock(digest: str) -> str:
    return f"unpack-{_hex(digest)}"


def _choose_victims(usage: _Usage, spared: set[str], limit: int) -> list[str]:
    """Unused bundles, least recently used first, until what remains fits `limit`.

    Evicting a digest frees its bundle and the blobs no other tagged manifest references (a blob shared
    with a kept image stays). Tags with no bundle, and no lease, are garbage and go in any case.
    """
    tagged = set(usage.references)
    remaining = tagged & (set(usage.bundles) | spared)
    counts = Counter(blob for digest in remaining for blob in usage.references[digest])
    total = usage.total
    total -= sum(size for blob, size in usage.blobs.items() if counts[blob] == 0)
    victims: list[str] = []
    for digest in sorted(set(usage.bundles) - spared, key=lambda d: (usage.last_used[d], d)):
        if total <= limit:
            break
        total -= usage.bundles[digest]
        if digest in remaining:
            remaining.discard(digest)
            for blob in usage.references[digest]:
                counts[blob] -= 1
                if counts[blob] == 0:
                    total -= usage.blobs.get(blob, 0)
        victims.append(digest)
    return victims
