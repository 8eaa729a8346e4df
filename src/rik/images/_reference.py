"""Parse the image references RIK accepts into what `skopeo copy` needs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from rik.drivers.base import DriverError

#: Transports passed through to skopeo as they are.
_PASSTHROUGH_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:", "dir:")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "[::1]"}
_DOCKER_REF = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?$"
)
_HOST = re.compile(r"^(?:localhost|\[[0-9a-fA-F:]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::\d+)?$")


@dataclass(frozen=True)
class ImageReference:
    """An image reference resolved to a skopeo source.

    `source` is the skopeo transport string; `tls_verify` is False for plain-HTTP registries;
    `pinned` is True when the reference names an immutable digest, so a cached copy can be reused.
    """

    original: str
    source: str
    tls_verify: bool = True
    pinned: bool = False

    @property
    def is_registry(self) -> bool:
        return self.source.startswith("docker://")


def parse_reference(reference: str, insecure_registries: Iterable[str] = ()) -> ImageReference:
    """Turn `reference` into an `ImageReference`, or raise `DriverError("ImagePullFailed")`.

    Accepted forms: `oci:/path/layout[:tag]` (and the other local skopeo transports),
    `docker://host/repo:tag`, and Docker-style references (`repo`, `repo:tag`, `host:port/repo@sha256:…`),
    which default to Docker Hub like `docker pull` does.
    """
    ref = reference.strip()
    if not ref or any(c.isspace() for c in ref):
        raise _invalid(reference, "it is empty or contains whitespace")
    if ref.startswith(_PASSTHROUGH_TRANSPORTS):
        path = ref.split(":", 1)[1]
        if not path.startswith("/"):
            raise _invalid(reference, "local image paths must be absolute")
        return ImageReference(reference, ref)
    ref = ref.removeprefix("docker://")
    if "://" in ref:
        raise _invalid(reference, "unsupported transport")
    host, _, rest = ref.partition("/")
    if rest and ("." in host or ":" in host or host == "localhost" or host.startswith("[")):
        if not _HOST.match(host):
            raise _invalid(reference, f"bad registry host {host!r}")
        path = rest
    else:
        host, path = "docker.io", ref
        if "/" not in path.split("@")[0].split(":")[0]:
            path = f"library/{path}"
    match = _DOCKER_REF.match(path)
    if match is None:
        raise _invalid(reference, "the repository name, tag or digest is malformed")
    if match["tag"] is None and match["digest"] is None:
        path = f"{path}:latest"
    insecure = set(insecure_registries)
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    tls_verify = not (hostname in _LOOPBACK_HOSTS or host in insecure or hostname in insecure)
    return ImageReference(
        reference, f"docker://{host}/{path}", tls_verify=tls_verify, pinned=match["digest"] is not None
    )


def _invalid(reference: str, why: str) -> DriverError:
    return DriverError("ImagePullFailed", f"invalid image reference {reference!r}: {why}")
