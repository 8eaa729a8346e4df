"""Fixtures for the VM driver: busybox test images, the guest kernel (provisioned once per machine under
/var/cache/rik-test/guest), and a live node (image store, bridge network, VM driver) torn down after each test."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rik.drivers.base import Handle, InstanceRequest
from rik.drivers.vm import GuestAssets, VMDriver
from rik.images import ImageStore
from rik.model import WorkloadSpec
from rik.network import NodeNetwork
from tests.support.images import build_busybox_cgi_image

#: Shared by test sessions: the kernel package is downloaded once per machine.
GUEST_CACHE = Path(os.environ.get("RIK_TEST_GUEST_DIR", "/var/cache/rik-test/guest"))
INDEX_HTML = "<h1>hello from a rik vm</h1>\n"
TOOLS = ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "nsenter", "iptables-restore", "skopeo", "umoci", "ip")


def _require_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    if not Path("/bin/busybox").is_file() or not Path("/dev/net/tun").exists():
        pytest.skip("needs busybox-static and /dev/net/tun")


@pytest.fixture(scope="session")
def cgi_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox httpd on 8080 serving INDEX_HTML and /cgi-bin/env; the image sets GREETING=from-image."""
    _require_host()
    layout = tmp_path_factory.mktemp("vm-images") / "layout"
    return build_busybox_cgi_image(layout, "cgi", index_html=INDEX_HTML, env={"GREETING": "from-image"})


@pytest.fixture(scope="session")
def empty_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image with no layers, no entrypoint and no command."""
    _require_host()
    layout = tmp_path_factory.mktemp("vm-empty") / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, capture_output=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:empty"], check=True, capture_output=True)
    return f"oci:{layout}:empty"


@pytest.fixture(scope="session")
def guest_assets() -> GuestAssets:
    _require_host()
    return GuestAssets(GUEST_CACHE)


@dataclass
class VMNode:
    root: Path
    images: ImageStore
    network: NodeNetwork
    assets: GuestAssets
    driver: VMDriver
    handles: list[Handle] = field(default_factory=list)

    def new_driver(self) -> VMDriver:
        """A second driver over the same directories, as after a riklet restart."""
        return VMDriver(self.root / "driver", self.network, self.images, assets=self.assets)

    async def start(self, instance_id: str, spec: WorkloadSpec) -> Handle:
        handle = await self.driver.start(InstanceRequest(id=instance_id, workload="w", spec=spec), no_progress)
        self.handles.append(handle)
        return handle


async def no_progress(stage: str, message: str) -> None:
    pass


@pytest.fixture
async def vm_node(tmp_path: Path, guest_assets: GuestAssets) -> AsyncIterator[VMNode]:
    bridge = f"rikv{os.getpid() % 100000}"[:15]
    network = NodeNetwork(
        bridge,
        ipaddress.IPv4Network("10.233.0.0/24"),
        tmp_path / "network",
        host_address="127.0.0.1",
        port_range=(32100, 32199),
    )
    await network.setup()
    images = ImageStore(tmp_path / "images")
    driver = VMDriver(tmp_path / "driver", network, images, assets=guest_assets)
    problem = await driver.probe()
    if problem is not None:
        await network.teardown()
        # scripts/setup installs everything the runtime needs: a probe failure is a failure, not a skip.
        pytest.fail(f"the vm runtime does not work here: {problem}")
    node = VMNode(tmp_path, images, network, guest_assets, driver)
    try:
        yield node
    finally:
        for handle in node.handles:
            await driver.destroy(handle)
        for instance_id in await network.attachments():
            await driver.destroy(Handle(id=instance_id, driver="vm"))
        await network.teardown()


def qemu_pids(marker: str = "") -> set[int]:
    """Live QEMU processes whose command line mentions `marker` (a test's own directory: QEMU
    processes of other tests or programs on the machine are not this test's business)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            alive = stat.rsplit(")", 1)[1].split()[0] != "Z"
            if b"qemu-system" in cmdline and marker.encode() in cmdline and alive:
                pids.add(int(entry.name))
    return pids


def netns_names() -> set[str]:
    """Namespaces of VM test nodes (other tests may run beside these)."""
    if not Path("/run/netns").is_dir():
        return set()
    return {p.name for p in Path("/run/netns").iterdir() if p.name.startswith("rik-rikv")}


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Fail if the test leaves a QEMU process or a network namespace behind."""
    before_pids, before_netns = qemu_pids(str(tmp_path)), netns_names()
    yield
    assert qemu_pids(str(tmp_path)) - before_pids == set()
    assert netns_names() - before_netns == set()
