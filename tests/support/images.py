"""Build tiny OCI images for tests and benchmarks, with no registry and no debootstrap.

An image is one layer holding the host's statically linked ``/bin/busybox`` (Debian's
``busybox-static``) with every applet linked in ``/bin``, a minimal ``/etc`` and a ``/www`` that
``busybox httpd`` serves. ``umoci`` writes the OCI layout, ``skopeo`` pushes it to a registry.

Builds are reproducible: the same arguments give the same manifest digest.

With ``cgi=True`` the image also serves ``/cgi-bin/env``, a CGI script answering
``GREETING=<$GREETING>`` and ``HOSTNAME=<$HOSTNAME, else the UTS hostname>`` lines
(see :func:`parse_cgi_env`), to check the environment and identity of an instance.

Command line, for scripts and benchmarks (prints the resulting reference)::

    python -m tests.support.images build --layout DIR --tag T [--index-html TEXT] [--port N]
        [--env K=V ...] [--cgi] [--push 127.0.0.1:5000/hello:1]
    python -m tests.support.images push oci:DIR:T 127.0.0.1:5000/hello:1
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
CGI_ENV_PATH = "/cgi-bin/env"
DEFAULT_PATH_ENV = "/bin"

# Fixed timestamps make builds reproducible.
_EPOCH = 1_700_000_000
_CREATED = "2023-11-14T22:13:20Z"  # == _EPOCH
_CREATED_BY = "tests.support.images"

_ETC_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_ETC_GROUP = "root:x:0:\nnogroup:x:65534:\n"
# No resolver: lookups fail fast instead of stalling on a nameserver that is not there.
_ETC_RESOLV_CONF = "# no resolver in test images\n"
_ROOT_DIRS = {
    "bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555, "root": 0o700, "sys": 0o555, "tmp": 0o1777,
    "www": 0o755,
}  # fmt: skip
_CGI_ENV_SCRIPT = """#!/bin/sh
echo "Content-Type: text/plain"
echo ""
echo "GREETING=$GREETING"
echo "HOSTNAME=${HOSTNAME:-$(hostname)}"
"""


class ImageToolError(RuntimeError):
    """An external image tool (umoci, skopeo) failed."""


def build_busybox_httpd_image(
    layout_dir: Path,
    tag: str,
    *,
    index_html: str,
    port: int = 8080,
    env: Mapping[str, str] | None = None,
    cgi: bool = False,
) -> str:
    """Build (or rebuild) ``tag`` in the OCI layout ``layout_dir``; return ``oci:<layout>:<tag>``.

    The entrypoint is ``busybox httpd -f -v -p <port> -h /www``. ``env`` is added to the image
    config after ``PATH=/bin``. With ``cgi`` the image also serves :data:`CGI_ENV_PATH`.
    The layout is created if needed; concurrent builds into the same layout are serialised.
    """
    if not 0 < port < 65536:
        raise ValueError(f"invalid port: {port}")
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} not found: install busybox-static (scripts/setup)")
    layout_dir = layout_dir.absolute()
    layout_dir.parent.mkdir(parents=True, exist_ok=True)
    image = f"{layout_dir}:{tag}"
    full_env = {"PATH": DEFAULT_PATH_ENV, **(env or {})}
    for key in full_env:
        if not key or "=" in key:
            raise ValueError(f"invalid environment variable name: {key!r}")

    with _layout_lock(layout_dir), tempfile.TemporaryDirectory(prefix="morty-image-") as tmp:
        layer = Path(tmp) / "layer.tar"
        layer.write_bytes(_rootfs_tar(index_html=index_html, cgi=cgi))
        if not (layout_dir / "index.json").exists():
            _run(["umoci", "init", "--layout", str(layout_dir)])
        _run(["umoci", "new", "--image", image])
        history = ["--history.created", _CREATED, "--history.created_by", _CREATED_BY]
        _run(["umoci", "raw", "add-layer", "--image", image, *history, str(layer)])
        entrypoint = ["/bin/busybox", "httpd", "-f", "-v", "-p", str(port), "-h", "/www"]
        config_args = ["umoci", "config", "--image", image, "--no-history", "--created", _CREATED]
        config_args += ["--config.workingdir", "/www", "--config.exposedports", f"{port}/tcp"]
        for arg in entrypoint:
            config_args += ["--config.entrypoint", arg]
        for key, value in full_env.items():
            config_args += ["--config.env", f"{key}={value}"]
        _run(config_args)
        _run(["umoci", "gc", "--layout", str(layout_dir)])
    return f"oci:{image}"


def build_busybox_cgi_image(
    layout_dir: Path,
    tag: str,
    *,
    index_html: str = "ok\n",
    port: int = 8080,
    env: Mapping[str, str] | None = None,
) -> str:
    """Like :func:`build_busybox_httpd_image` with ``cgi=True``: also serves ``/cgi-bin/env``."""
    return build_busybox_httpd_image(layout_dir, tag, index_html=index_html, port=port, env=env, cgi=True)


def push_image(oci_ref: str, registry: str, repo_tag: str) -> str:
    """Copy ``oci_ref`` to ``registry`` (plain HTTP) as ``repo_tag``; return ``registry/repo:tag``."""
    dest = f"{registry}/{repo_tag}"
    _run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", oci_ref, f"docker://{dest}"])
    return dest


def manifest_digest(oci_ref: str) -> str:
    """The manifest digest (``sha256:...``) that ``oci:<layout>:<tag>`` points at."""
    layout, tag = _split_oci_ref(oci_ref)
    index = json.loads((layout / "index.json").read_text())
    for descriptor in index.get("manifests", []):
        if descriptor.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return str(descriptor["digest"])
    raise KeyError(f"tag {tag!r} not in {layout}")


def image_config(oci_ref: str) -> dict[str, object]:
    """The OCI image config (the JSON document with ``config``, ``rootfs``...) of ``oci_ref``."""
    layout, _ = _split_oci_ref(oci_ref)
    manifest = json.loads(_blob(layout, manifest_digest(oci_ref)))
    config: dict[str, object] = json.loads(_blob(layout, manifest["config"]["digest"]))
    return config


def parse_cgi_env(body: str) -> dict[str, str]:
    """Parse the ``KEY=VALUE`` lines that ``/cgi-bin/env`` answers."""
    result: dict[str, str] = {}
    for line in body.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            result[key] = value
    return result


def _rootfs_tar(*, index_html: str, cgi: bool) -> bytes:
    """An uncompressed, reproducible layer tarball."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, _EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for directory, mode in _ROOT_DIRS.items():
            add(directory, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in _busybox_applets():
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        add("etc/hosts", tarfile.REGTYPE, 0o644, _ETC_HOSTS.encode())
        add("etc/passwd", tarfile.REGTYPE, 0o644, _ETC_PASSWD.encode())
        add("etc/group", tarfile.REGTYPE, 0o644, _ETC_GROUP.encode())
        add("etc/resolv.conf", tarfile.REGTYPE, 0o644, _ETC_RESOLV_CONF.encode())
        add("www/index.html", tarfile.REGTYPE, 0o644, index_html.encode())
        if cgi:
            add("www/cgi-bin", tarfile.DIRTYPE, 0o755)
            add("www/cgi-bin/env", tarfile.REGTYPE, 0o755, _CGI_ENV_SCRIPT.encode())
    return buffer.getvalue()


def _busybox_applets() -> list[str]:
    listing = _run([str(BUSYBOX), "--list"])
    return sorted({name for name in listing.split() if name and "/" not in name and name != "busybox"})


def _split_oci_ref(oci_ref: str) -> tuple[Path, str]:
    if not oci_ref.startswith("oci:"):
        raise ValueError(f"not an oci: reference: {oci_ref!r}")
    layout, sep, tag = oci_ref.removeprefix("oci:").rpartition(":")
    if not sep or not layout or not tag:
        raise ValueError(f"expected oci:<layout>:<tag>, got {oci_ref!r}")
    return Path(layout), tag


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hex_digest = digest.partition(":")
    return (layout / "blobs" / algorithm / hex_digest).read_bytes()


@contextmanager
def _layout_lock(layout_dir: Path) -> Iterator[None]:
    # A sibling file: the layout directory itself should hold only OCI content.
    lock_path = layout_dir.with_name(layout_dir.name + ".lock")
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run(args: Sequence[str]) -> str:
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageToolError(f"{args[0]} not found: install it (scripts/setup)") from exc
    if proc.returncode != 0:
        raise ImageToolError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _split_push_target(target: str) -> tuple[str, str]:
    registry, sep, repo_tag = target.partition("/")
    if not sep or not repo_tag or ":" not in repo_tag.rsplit("/", 1)[-1]:
        raise argparse.ArgumentTypeError(f"expected REGISTRY/REPO:TAG, got {target!r}")
    return registry, repo_tag


def _parse_env(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.images", description="Build tiny busybox httpd OCI images."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="build a busybox httpd image into an OCI layout")
    build.add_argument("--layout", type=Path, required=True, help="OCI layout directory")
    build.add_argument("--tag", required=True)
    build.add_argument("--index-html", default="hello from morty\n", help="content of /www/index.html")
    build.add_argument("--port", type=int, default=8080, help="port httpd listens on (default 8080)")
    build.add_argument("--env", type=_parse_env, action="append", default=[], metavar="KEY=VALUE")
    build.add_argument("--cgi", action="store_true", help=f"also serve {CGI_ENV_PATH}")
    build.add_argument("--push", type=_split_push_target, metavar="REGISTRY/REPO:TAG")

    push = commands.add_parser("push", help="push an oci:<layout>:<tag> image to a registry")
    push.add_argument("oci_ref")
    push.add_argument("target", type=_split_push_target, metavar="REGISTRY/REPO:TAG")

    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            ref = build_busybox_httpd_image(
                args.layout,
                args.tag,
                index_html=args.index_html,
                port=args.port,
                env=dict(args.env),
                cgi=args.cgi,
            )
            if args.push:
                ref = push_image(ref, *args.push)
        else:
            ref = push_image(args.oci_ref, *args.target)
    except (ImageToolError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
