"""The node's image store: one shared OCI layout (blobs deduplicated) and one unpacked bundle per digest.

Layout on disk::

    <root>/layout/              OCI image layout written by `skopeo copy`; one tag per pulled reference
    <root>/bundles/<hex>/       `umoci unpack` of manifest sha256:<hex>: rootfs/ + config.json
    <root>/locks/               lock files (layout writes, unpack per digest)

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
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rik.drivers.base import DriverError, ProgressCallback
from rik.images._config import ImageConfig
from rik.images._locks import PathLocks
from rik.images._process import run_command
from rik.images._reference import ImageReference, parse_reference

logger = logging.getLogger(__name__)

_REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_LOCK = "layout"


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


class ImageStore:
    """Pulls images with skopeo into one OCI layout and unpacks each manifest digest once with umoci."""

    def __init__(
        self,
        root: Path,
        *,
        insecure_registries: Iterable[str] = (),
        pull_timeout: float = 600.0,
        unpack_timeout: float = 1800.0,
    ) -> None:
        self.root = root
        self.layout = root / "layout"
        self.bundles = root / "bundles"
        self._insecure = frozenset(insecure_registries)
        self._pull_timeout = pull_timeout
        self._unpack_timeout = unpack_timeout
        self._locks = PathLocks(root / "locks")
        # Digests between "copied" and "unpacked" in this process: garbage collection must spare them.
        self._in_flight: Counter[str] = Counter()

    # Public API ---------------------------------------------------------------------------------------

    async def pull(self, reference: str, progress: ProgressCallback | None = None) -> UnpackedImage:
        """Make `reference` available as an unpacked bundle; raise `DriverError("ImagePullFailed")`.

        References pinned by digest are copied only once; tags are re-resolved on every pull (blobs
        already in the layout are not downloaded again) so a moved tag is noticed.
        """
        ref = parse_reference(reference, self._insecure)
        tag = _tag_for(reference)
        digest = await self._copy(ref, tag, progress)
        async with self._using(digest):
            config = ImageConfig.from_oci(await asyncio.to_thread(self._read_image_config, digest))
            bundle = await self._unpack(digest, progress)
        return UnpackedImage(reference=reference, digest=digest, bundle=bundle, config=config)

    def cached_digests(self) -> set[str]:
        """Digests that have an unpacked bundle."""
        if not self.bundles.is_dir():
            return set()
        return {f"sha256:{p.name}" for p in self.bundles.iterdir() if not p.name.startswith(".")}

    async def remove_unused(self, keep: set[str]) -> set[str]:
        """Delete bundles, tags and blobs of every image whose manifest digest is not in `keep`.

        `keep` holds manifest digests (`sha256:…`) of images still in use. Returns the digests removed.
        """
        async with self._locks.hold(_LAYOUT_LOCK):
            spared = keep | {d for d, n in self._in_flight.items() if n > 0}
            removed = await asyncio.to_thread(self._untag_except, spared)
            if (self.layout / "index.json").exists():
                result = await run_command("umoci", "gc", "--layout", str(self.layout))
                if not result.ok:
                    logger.warning("umoci gc failed: %s", result.last_error_line())
        for digest in self.cached_digests() - spared:
            async with self._locks.hold(_digest_lock(digest)):
                if self._in_flight[digest] == 0:
                    await asyncio.to_thread(shutil.rmtree, self.bundles / _hex(digest), True)
                    removed.add(digest)
        if removed:
            logger.info("removed unused images", extra={"digests": sorted(removed)})
        return removed

    # Pull ---------------------------------------------------------------------------------------------

    async def _copy(self, ref: ImageReference, tag: str, progress: ProgressCallback | None) -> str:
        async with self._locks.hold(_LAYOUT_LOCK):
            if ref.pinned:
                known = await asyncio.to_thread(self._tagged_digest, tag)
                if known is not None:
                    self._in_flight[known] += 1
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
            # Counted under the layout lock, so garbage collection cannot drop the blobs before unpack.
            self._in_flight[digest] += 1
            logger.info("pulled image", extra={"reference": ref.original, "digest": digest})
            return digest

    @contextlib.asynccontextmanager
    async def _using(self, digest: str) -> AsyncIterator[None]:
        """Release the in-flight mark that `_copy` took for `digest`."""
        try:
            yield
        finally:
            self._in_flight[digest] -= 1
            if self._in_flight[digest] <= 0:
                del self._in_flight[digest]

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
