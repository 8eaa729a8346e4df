"""Fixtures for the node runtime layer: a busybox test image built with umoci, and a live node
(image store, bridge network, container driver) that is torn down after each test."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rik.drivers.base import Handle
from rik.drivers.container import ContainerDriver
from rik.images import ImageStore
from rik.network import NodeNetwork

BUSYBOX = Path("/bin/busybox")
INDEX_HTML = "<h1>hello from rik</h1>\n"
APPLETS = ("sh", "httpd", "cat", "echo", "sleep", "ls", "mkdir", "env", "true", "false", "hostname", "wget")


def _umoci(*args: str) -> None:
    subprocess.run(["umoci", *args], check=True, capture_output=True)


def build_busybox_image(root: Path, tag: str = "t") -> str:
    """Build a one-layer busybox image serving /www with httpd; return its `oci:` reference.

    Entrypoint `httpd -f`, Cmd `-p 80 -h /www` (so `args` can replace the port), image env
    IMAGE_VAR=from-image and OVERRIDE=image, working dir /www.
    """
    layout, bundle = root / "layout", root / "bundle"
    _umoci("init", "--layout", str(layout))
    _umoci("new", "--image", f"{layout}:base")
    _umoci("unpack", "--image", f"{layout}:base", str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "tmp", "proc", "sys", "dev", "www"):
        (rootfs / directory).mkdir(exist_ok=True)
    (rootfs / "www" / "index.html").write_text(INDEX_HTML)
    _umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
    _umoci(
        "config",
        "--image",
        f"{layout}:{tag}",
        "--config.entrypoint",
        "/bin/httpd",
        "--config.entrypoint",
        "-f",
        "--config.cmd",
        "-p",
        "--config.cmd",
        "80",
        "--config.cmd",
        "-h",
        "--config.cmd",
        "/www",
        "--config.env",
        "PATH=/bin",
        "--config.env",
        "IMAGE_VAR=from-image",
        "--config.env",
        "OVERRIDE=image",
        "--config.workingdir",
        "/www",
        "--config.exposedports",
        "80/tcp",
    )
    shutil.rmtree(bundle)
    return f"oci:{layout}:{tag}"


def derive_image(base: str, tag: str, files: dict[str, bytes]) -> str:
    """Add one layer with `files` (paths relative to the root) to the `oci:` image `base`, tagged `tag` in
    the same layout; return its reference. Images derived from one base share the base's layers."""
    layout = Path(base.split(":")[1])
    bundle = layout.parent / f"bundle-{tag}"
    _umoci("unpack", "--image", base.removeprefix("oci:"), str(bundle))
    for name, data in files.items():
        path = bundle / "rootfs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    _umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
    shutil.rmtree(bundle)
    return f"oci:{layout}:{tag}"


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in ("runc", "skopeo", "umoci", "iptables", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")


@pytest.fixture(scope="session")
def image_ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_root()
    yield build_busybox_image(tmp_path_factory.mktemp("image"))


def unique_bridge(prefix: str = "rikt") -> str:
    return f"{prefix}{os.getpid() % 100000}"[:15]


@dataclass
class Node:
    root: Path
    images: ImageStore
    network: NodeNetwork
    driver: ContainerDriver
    handles: list[Handle]

    def new_driver(self) -> ContainerDriver:
        """A second driver over the same directories, as after a riklet restart."""
        return ContainerDriver(self.root / "driver", self.network, self.images)


@pytest.fixture
async def node(tmp_path: Path, image_ref: str) -> AsyncIterator[Node]:
    network = NodeNetwork(
        unique_bridge(),
        ipaddress.IPv4Network("10.231.0.0/24"),
        tmp_path / "network",
        host_address="127.0.0.1",
        port_range=(31000, 31999),
    )
    await network.setup()
    images = ImageStore(tmp_path / "images")
    driver = ContainerDriver(tmp_path / "driver", network, images)
    node = Node(tmp_path, images, network, driver, [])
    try:
        yield node
    finally:
        for handle in node.handles:
            await driver.destroy(handle)
        # Anything the test did not track (e.g. a failed assertion between start and append).
        for instance_id in await network.attachments():
            await driver.destroy(Handle(id=instance_id, driver="container"))
        await network.teardown()
