"""Runtime base images: Debian bookworm (mmdebstrap, no Docker) plus alpha and the runtime under /opt/morty.

Built once per recipe: the Debian root file system is cached as a tarball keyed by the hash of the mmdebstrap
recipe (``<cache>/debian-<hash>/rootfs.tar``, ~60 s to make), and the image as an OCI layout keyed by the hash of
the whole recipe (``<cache>/<runtime>-<hash>/layout``, tag ``base``), so a change to alpha or the runtime rebuilds
only the small Morty layer. The image is pushed to the registry as ``morty/runtime-<runtime>:<hash>``.

Layers: (1) Debian minbase with python3, python3-pip and ca-certificates; (2) Morty: ``/opt/morty/alpha``,
``/opt/morty/runtimes/python``, an empty ``/opt/morty/deps``, ``/var/task``, and an ``/etc/hosts``,
``/etc/resolv.conf`` (no resolver: nothing in an instance should wait on DNS) and ``/etc/hostname``.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import morty.alpha
import morty.runtimes.node
import morty.runtimes.python
from morty.builder._layers import CREATED, write_layer
from morty.builder._tools import LogSink, run
from morty.builder.registry import push

DEFAULT_CACHE = Path("/var/cache/morty/base")
MIRROR = "http://deb.debian.org/debian"
TAG = "base"
PORT = 8080
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MMDEBSTRAP_TIMEOUT = 900.0


@dataclass(frozen=True)
class Recipe:
    """What a runtime base image is made of; its hash names the cache entry and the registry tag."""

    runtime: str
    language: str
    """`python` or `node`: how function builds install dependencies and find the handler (`function.LANGUAGES`)."""
    packages: tuple[str, ...]
    files: dict[str, tuple[bytes, int]]
    directories: dict[str, int]
    entrypoint: tuple[str, ...]
    env: tuple[str, ...]
    suite: str = "bookworm"
    mirror: str = MIRROR

    def mmdebstrap(self, target: Path) -> list[str]:
        return [
            "mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", f"--include={','.join(self.packages)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-exclude=/usr/share/info/*",
            self.suite, str(target), self.mirror,
        ]  # fmt: skip

    def debian_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.mmdebstrap(Path("/"))).encode()).hexdigest()[:16]

    def hash(self) -> str:
        recipe = {
            "debian": self.debian_hash(),
            "files": {name: [hashlib.sha256(data).hexdigest(), mode] for name, (data, mode) in self.files.items()},
            "directories": self.directories,
            "entrypoint": self.entrypoint,
            "env": self.env,
            "port": PORT,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _package_files(package_dir: Path, target: str, names: list[str] | None = None) -> dict[str, tuple[bytes, int]]:
    paths = sorted(package_dir.glob("*.py")) if names is None else [package_dir / name for name in names]
    return {f"{target}/{path.name}": (path.read_bytes(), 0o644) for path in paths}


def python_recipe() -> Recipe:
    alpha = Path(morty.alpha.__file__).parent
    runtime = Path(morty.runtimes.python.__file__).parent
    files = {
        **_package_files(alpha, "opt/morty/alpha"),
        **_package_files(runtime, "opt/morty/runtimes/python", ["server.py", "morty_runtime.py"]),
        "etc/hosts": (b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/resolv.conf": (b"# no resolver: lookups fail fast\n", 0o644),
        "etc/hostname": (b"morty\n", 0o644),
    }
    return Recipe(
        runtime="python3.11",
        language="python",
        packages=("python3", "python3-pip", "ca-certificates"),
        files=files,
        directories={"opt/morty/deps": 0o755, "var/task": 0o755},
        entrypoint=("/usr/bin/python3", "/opt/morty/alpha/__main__.py"),
        env=(
            f"PATH={PATH_ENV}",
            "LANG=C.UTF-8",
            "PYTHONUNBUFFERED=1",
            f"MORTY_PORT={PORT}",
            "MORTY_RUNTIME_CMD=/usr/bin/python3 /opt/morty/runtimes/python/server.py",
        ),
    )


def _common_files() -> dict[str, tuple[bytes, int]]:
    return {
        **_package_files(Path(morty.alpha.__file__).parent, "opt/morty/alpha"),
        "etc/hosts": (b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644),
        "etc/resolv.conf": (b"# no resolver: lookups fail fast\n", 0o644),
        "etc/hostname": (b"morty\n", 0o644),
    }


def node_recipe() -> Recipe:
    """Debian's Node.js (18) and npm, with python3 for alpha."""
    runtime = Path(morty.runtimes.node.__file__).parent
    files = {
        **_common_files(),
        "opt/morty/runtimes/node/server.js": ((runtime / "server.js").read_bytes(), 0o644),
        "opt/morty/runtimes/node/modules/morty-runtime.js": (
            (runtime / "modules" / "morty-runtime.js").read_bytes(),
            0o644,
        ),
    }
    return Recipe(
        runtime="node18",
        language="node",
        packages=("nodejs", "npm", "python3", "ca-certificates"),
        files=files,
        directories={"opt/morty/deps": 0o755, "var/task": 0o755},
        entrypoint=("/usr/bin/python3", "/opt/morty/alpha/__main__.py"),
        env=(
            f"PATH={PATH_ENV}",
            "LANG=C.UTF-8",
            "PYTHONUNBUFFERED=1",
            f"MORTY_PORT={PORT}",
            "NODE_PATH=/opt/morty/runtimes/node/modules:/opt/morty/deps/node_modules",
            "MORTY_RUNTIME_CMD=/usr/bin/node /opt/morty/runtimes/node/server.js",
        ),
    )


RECIPES = {"python3.11": python_recipe, "node18": node_recipe}


@dataclass(frozen=True)
class BaseImage:
    runtime: str
    hash: str
    layout: Path
    """An OCI layout holding the image under tag `TAG`."""
    language: str = "python"

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{TAG}"

    def repository(self, registry: str) -> str:
        return f"{registry}/morty/runtime-{self.runtime}:{self.hash}"


class _FileLock:
    """An exclusive `flock` taken without blocking the event loop: builds in other processes share the cache."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    async def __aenter__(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        await asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX)

    async def __aexit__(self, *_exc: object) -> None:
        os.close(self._fd)  # releases the lock


async def _debian_rootfs(recipe: Recipe, cache: Path, log: LogSink) -> Path:
    directory = cache / f"debian-{recipe.debian_hash()}"
    tarball = directory / "rootfs.tar"
    async with _FileLock(directory / ".lock"):
        if tarball.is_file():
            await log(f"debian root file system: cached ({tarball})\n")
            return tarball
        await log(f"debian root file system: building with mmdebstrap ({recipe.suite}, {', '.join(recipe.packages)})\n")
        with tempfile.TemporaryDirectory(prefix="build-", dir=directory) as tmp:
            rootfs = Path(tmp) / "rootfs"
            await run(recipe.mmdebstrap(rootfs), log, what="mmdebstrap", timeout=MMDEBSTRAP_TIMEOUT)
            partial = Path(tmp) / "rootfs.tar"
            await run(
                ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."], log, what="tar"
            )
            partial.rename(tarball)
    return tarball


async def ensure_base_image(runtime: str, cache: Path = DEFAULT_CACHE, log: LogSink | None = None) -> BaseImage:
    """The base image of `runtime` in the local cache, building it first if needed."""
    from morty.builder._tools import discard

    sink = log or discard
    recipe = RECIPES[runtime]()
    digest = recipe.hash()
    directory = cache / f"{runtime}-{digest}"
    image = BaseImage(runtime=runtime, hash=digest, layout=directory / "layout", language=recipe.language)
    if (directory / "done").is_file():
        await sink(f"base image {runtime}:{digest}: cached\n")
        return image
    debian = await _debian_rootfs(recipe, cache, sink)
    async with _FileLock(directory / ".lock"):
        if (directory / "done").is_file():
            return image
        await sink(f"base image {runtime}:{digest}: building\n")
        shutil.rmtree(image.layout, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=directory) as tmp:
            layer = Path(tmp) / "morty.tar"
            await asyncio.to_thread(write_layer, layer, files=recipe.files, directories=recipe.directories)
            ref = f"{image.layout}:{TAG}"
            history = ["--history.created", CREATED]
            await run(["umoci", "init", "--layout", str(image.layout)], sink, what="umoci init")
            await run(["umoci", "new", "--image", ref], sink, what="umoci new")
            for path, by in ((debian, "mmdebstrap"), (layer, "morty")):
                argv = ["umoci", "raw", "add-layer", "--image", ref, *history, "--history.created_by", by, str(path)]
                await run(argv, sink, what="umoci raw add-layer")
            config = ["umoci", "config", "--image", ref, "--no-history", "--created", CREATED]
            config += ["--config.workingdir", "/", "--config.exposedports", f"{PORT}/tcp"]
            for word in recipe.entrypoint:
                config += ["--config.entrypoint", word]
            for env in recipe.env:
                config += ["--config.env", env]
            config += ["--config.label", f"org.morty.runtime={runtime}", "--config.label", f"org.morty.base={digest}"]
            await run(config, sink, what="umoci config")
            await run(["umoci", "gc", "--layout", str(image.layout)], sink, what="umoci gc")
        (directory / "done").write_text(image.oci_ref + "\n")
    await sink(f"base image {runtime}:{digest}: built\n")
    return image


async def push_base_image(image: BaseImage, registry: str, log: LogSink, *, tls_verify: bool = False) -> str:
    """Push the base image to `registry` as ``morty/runtime-<runtime>:<hash>`` and ``:latest`` (the name
    `morty.api.runtimes` lists); returns the first."""
    reference = image.repository(registry)
    argv = ["skopeo", "copy", "--quiet", f"--dest-tls-verify={str(tls_verify).lower()}", image.oci_ref]
    for target in (reference, f"{reference.rsplit(':', 1)[0]}:latest"):
        await push([*argv, f"docker://{target}"], target, log, what="skopeo copy (base image)", tls_verify=tls_verify)
    return reference


if __name__ == "__main__":  # builds (if needed) and prints the OCI reference: python -m morty.builder.base [RUNTIME]
    import sys

    print(asyncio.run(ensure_base_image(sys.argv[1] if len(sys.argv) > 1 else "python3.11")).oci_ref)
