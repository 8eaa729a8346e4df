"""Function images: the runtime base image plus a dependency layer (``/opt/morty/deps``, installed by the
runtime's own package manager, pip or npm, inside a sandbox of the base image) and a code layer (``/var/task``),
pushed to the registry as ``morty/fn-<name>:<version>``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from morty.builder._layers import CREATED, write_layer
from morty.builder._tools import BuildError, LogSink, run
from morty.builder.base import TAG, BaseImage
from morty.builder.registry import push
from morty.builder.sandbox import NOBODY, Mount, Sandbox, SandboxLimits
from morty.storage.archives import ArchiveError, ArchiveLimits, extract_archive

CODE_DIR = "/var/task"
DEPS_DIR = "/opt/morty/deps"
DEFAULT_HANDLER = "main.handler"
FUNCTION_TAG = "function"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_HANDLER_LINE = re.compile(r"^handler:\s*['\"]?([A-Za-z_][\w.]*)['\"]?\s*(#.*)?$", re.MULTILINE)
_TAG_OK = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Language:
    """How a language's functions are built: the file listing dependencies, the handler's file suffixes, the
    function image's own environment, and the sandboxed install (argv, environment) into `DEPS_DIR`."""

    name: str
    tool: str
    """The package manager, as build logs and errors name it."""
    manifest: str
    suffixes: tuple[str, ...]
    env: tuple[str, ...]
    install: tuple[str, ...]
    install_env: tuple[tuple[str, str], ...]
    ca_env: str
    """The variable that points the installer at a CA bundle."""
    copy_manifest: tuple[str, ...] = ()
    """Files copied from the code into `DEPS_DIR` before installing (npm installs where package.json is)."""


LANGUAGES = {
    "python": Language(
        name="python",
        tool="pip",
        manifest="requirements.txt",
        suffixes=(".py",),
        env=(f"PYTHONPATH={DEPS_DIR}",),
        install=(
            "/usr/bin/python3",
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "--no-warn-script-location",
            "--target",
            DEPS_DIR,
            "-r",
            f"{CODE_DIR}/requirements.txt",
        ),  # fmt: skip
        install_env=(("LANG", "C.UTF-8"), ("PIP_BREAK_SYSTEM_PACKAGES", "1"), ("PYTHONDONTWRITEBYTECODE", "1")),
        ca_env="PIP_CERT",
    ),
    "node": Language(
        name="node",
        tool="npm",
        manifest="package.json",
        suffixes=(".js", ".cjs", ".mjs"),
        env=(),
        install=(
            "/usr/bin/npm",
            "install",
            "--omit=dev",
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel=warn",
        ),  # fmt: skip
        install_env=(("LANG", "C.UTF-8"), ("HOME", "/tmp"), ("npm_config_cache", "/tmp/npm-cache")),
        ca_env="NODE_EXTRA_CA_CERTS",
        copy_manifest=("package.json", "package-lock.json"),
    ),
}


@dataclass(frozen=True)
class FunctionImage:
    reference: str
    """``REGISTRY/morty/fn-<name>:<tag>``."""
    digest: str
    """The manifest digest, ``sha256:...``."""
    handler: str

    @property
    def pinned(self) -> str:
        return f"{self.reference.rsplit(':', 1)[0]}@{self.digest}"


@dataclass
class FunctionBuild:
    """One function image build, in `workdir` (private, removed by the caller)."""

    base: BaseImage
    registry: str
    workdir: Path
    log: LogSink
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    sandbox_limits: SandboxLimits = field(default_factory=SandboxLimits)
    tls_verify: bool = False
    ca_bundle: Path | None = field(default_factory=lambda: HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None)
    """The CAs pip trusts in the sandbox: the host's by default (which may hold a local proxy's CA); None: the
    image's own."""

    async def build(self, name: str, version: str, archive: Path, *, handler: str | None = None) -> FunctionImage:
        code = self.workdir / "code"
        code.mkdir(parents=True)
        try:
            summary = await asyncio.to_thread(extract_archive, archive, code, self.archive_limits)
        except ArchiveError as exc:
            raise BuildError(f"invalid code archive: {exc}") from None
        await self.log(f"code: {summary.files} files, {summary.expanded_bytes} bytes ({summary.format})\n")
        language = LANGUAGES[self.base.language]
        handler = _check_handler(handler or _handler_from_config(code) or DEFAULT_HANDLER)
        module = handler.rpartition(".")[0].replace(".", "/")
        found = any((code / f"{module}{suffix}").is_file() for suffix in language.suffixes)
        if not found and not (language.name == "python" and (code / module / "__init__.py").is_file()):
            raise BuildError(f"handler {handler!r}: the code has no {module}{' or '.join(language.suffixes)}")

        layout = self.workdir / "layout"
        await asyncio.to_thread(_link_layout, self.base.layout, layout)
        ref = f"{layout}:{FUNCTION_TAG}"
        await run(["umoci", "tag", "--image", f"{layout}:{TAG}", FUNCTION_TAG], self.log, what="umoci tag")
        history = ["--history.created", CREATED]

        if (code / language.manifest).is_file():
            deps = await self._install_dependencies(code, language)
            layer = self.workdir / "deps.tar"
            await asyncio.to_thread(write_layer, layer, tree=(deps, DEPS_DIR))
            by = f"{language.tool} install"
            argv = ["umoci", "raw", "add-layer", "--image", ref, *history, "--history.created_by", by]
            await run([*argv, str(layer)], self.log, what="umoci raw add-layer (dependencies)")
        else:
            await self.log(f"dependencies: no {language.manifest}\n")
        layer = self.workdir / "code.tar"
        await asyncio.to_thread(write_layer, layer, tree=(code, CODE_DIR))
        argv = ["umoci", "raw", "add-layer", "--image", ref, *history, "--history.created_by", "code"]
        await run([*argv, str(layer)], self.log, what="umoci raw add-layer (code)")
        config = ["umoci", "config", "--image", ref, "--no-history", "--created", CREATED]
        config += ["--config.workingdir", CODE_DIR]
        for env in (f"MORTY_CODE_DIR={CODE_DIR}", *language.env, f"MORTY_HANDLER={handler}"):
            config += ["--config.env", env]
        config += ["--config.label", f"org.morty.function={name}", "--config.label", f"org.morty.version={version}"]
        await run(config, self.log, what="umoci config")
        await run(["umoci", "gc", "--layout", str(layout)], self.log, what="umoci gc")

        reference = f"{self.registry}/morty/fn-{name}:{image_tag(version)}"
        digest_file = self.workdir / "digest"
        await self.log(f"push: {reference}\n")
        argv = ["skopeo", "copy", "--quiet", f"--dest-tls-verify={str(self.tls_verify).lower()}"]
        argv += ["--digestfile", str(digest_file), f"oci:{ref}", f"docker://{reference}"]
        await push(argv, reference, self.log, what="skopeo copy (function image)", tls_verify=self.tls_verify)
        digest = digest_file.read_text().strip()
        await self.log(f"pushed: {reference}@{digest}\n")
        return FunctionImage(reference=reference, digest=digest, handler=handler)

    async def _install_dependencies(self, code: Path, language: Language) -> Path:
        deps = self.workdir / "deps"
        deps.mkdir()
        for name in language.copy_manifest:
            if (code / name).is_file() and not (code / name).is_symlink():
                shutil.copyfile(code / name, deps / name)
        for path in (deps, *deps.iterdir()):
            os.chown(path, NOBODY, NOBODY)
        await self.log(f"dependencies: {language.tool} install ({language.manifest}, sandboxed)\n")
        env = dict(language.install_env)
        mounts = [Mount(code, CODE_DIR, readonly=True), Mount(deps, DEPS_DIR, readonly=False)]
        if self.ca_bundle is not None:
            mounts.append(Mount(self.ca_bundle.resolve(), IMAGE_CA_BUNDLE, readonly=True))
            env[language.ca_env] = IMAGE_CA_BUNDLE
        cwd = DEPS_DIR if language.copy_manifest else CODE_DIR
        await Sandbox(self.base, self.sandbox_limits).run(
            self.workdir / "sandbox", list(language.install), self.log, env=env, cwd=cwd, mounts=mounts,
            what=f"{language.tool} install",
        )  # fmt: skip
        return deps


def image_tag(version: str) -> str:
    """An OCI tag for a version (semver build metadata's ``+`` is not allowed in tags)."""
    return _TAG_OK.sub("_", version)[:128]


def _handler_from_config(code: Path) -> str | None:
    for name in ("morty.yaml", "morty.yml"):
        path = code / name
        if path.is_file() and not path.is_symlink():
            found = _HANDLER_LINE.search(path.read_text(errors="replace"))
            if found:
                return found.group(1)
    return None


def _link_layout(source: Path, destination: Path) -> None:
    """A private copy of an OCI layout whose blobs are hard links (blobs are immutable; umoci writes new ones
    and replaces the index)."""

    def copy(src: str, dst: str) -> object:
        if Path(src).parent.parent.name == "blobs":
            try:
                os.link(src, dst)
                return dst
            except OSError:
                pass
        return shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=copy)


def _check_handler(handler: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", handler):
        raise BuildError(f"handler must look like module.function, not {handler[:80]!r}")
    return handler
