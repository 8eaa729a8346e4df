"""Unit tests of the VM driver's pure parts: the guest config script, the initramfs archive, NAT rules,
the disk cache's eviction. Fast; they need busybox and cpio, not root or QEMU."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rik.drivers.base import DriverError
from rik.drivers.vm import _cpio as cpio
from rik.drivers.vm._config_disk import GuestConfig, config_disk, config_script
from rik.drivers.vm._disks import DiskCache, disk_url_format, is_disk_url
from rik.drivers.vm._link import nat_rules
from rik.model import PortSpec

BUSYBOX = Path("/bin/busybox")


@pytest.mark.skipif(not BUSYBOX.is_file(), reason="needs busybox-static")
def test_config_script_round_trips_arguments_through_busybox_sh(tmp_path: Path) -> None:
    argv = ["/bin/echo", "it's", "two words", "$HOME", "new\nline", ""]
    env = ["PATH=/bin", "QUOTE=a'b\"c", "EMPTY="]
    config = GuestConfig("h-1", argv, env, "/srv", "172.30.0.2", 30, "172.30.0.1")
    script = tmp_path / "config.sh"
    script.write_text(config_script(config))
    out = subprocess.run(
        [str(BUSYBOX), "sh", "-c", '. "$0"; printf "%s\\0" "$RIK_HOSTNAME" "$RIK_WORKDIR" "$@"', str(script)],
        capture_output=True,
        check=True,
    ).stdout
    assert out.decode().split("\0")[:-1] == ["h-1", "/srv", *env, *argv]
    assert len(config_disk(config)) % 512 == 0


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio")
def test_initramfs_archive_lists_with_cpio() -> None:
    data = cpio.archive(
        [cpio.directory("bin"), cpio.file("bin/x", b"hello", 0o755), cpio.symlink("bin/y", "x"),
         cpio.char_device("console", 5, 1)]
    )  # fmt: skip
    listing = subprocess.run(["cpio", "-itv"], input=gzip.decompress(data), capture_output=True, check=True).stdout
    names = [line.split()[-1] for line in listing.decode().splitlines()]
    assert names == ["bin", "bin/x", "x", "console"]  # a symlink lists as "bin/y -> x"


def test_nat_rules_forward_each_port_to_the_guest() -> None:
    rules = nat_rules([PortSpec(port=8080), PortSpec(port=53, protocol="udp")])
    assert "-A PREROUTING -i eth0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.30.0.2:8080" in rules
    assert "-p udp -m udp --dport 53 -j DNAT --to-destination 172.30.0.2:53" in rules
    assert "-A POSTROUTING -s 172.30.0.2/32 -o eth0 -j MASQUERADE" in rules
    assert rules.rstrip().endswith("COMMIT")


async def test_disk_cache_evicts_least_recently_used_disks_not_in_use(tmp_path: Path) -> None:
    cache_dir = tmp_path / "disks"
    cache_dir.mkdir()
    disks = []
    for index in range(4):
        disk = cache_dir / f"d{index}.ext4"
        disk.write_bytes(os.urandom(1024 * 1024))  # 1 MiB each, really allocated
        os.utime(disk, (1000 + index, 1000 + index))
        disks.append(disk)
    cache = DiskCache(cache_dir, cap_mib=2, in_use=lambda: {disks[0]})
    removed = await cache.evict()
    assert removed == [disks[1], disks[2]]  # oldest first, sparing the one in use
    assert [d.exists() for d in disks] == [True, False, False, True]


def test_raw_disk_urls_are_recognised_by_scheme_and_format_by_file_name() -> None:
    assert is_disk_url("file:///srv/disk.ext4") and is_disk_url("https://example.org/d.qcow2")
    assert not is_disk_url("127.0.0.1:5000/e2e/httpd:1") and not is_disk_url("oci:/layout:tag")
    assert disk_url_format("file:///srv/disk.ext4") == "raw"
    assert disk_url_format("http://h/a/root.IMG?token=1") == "raw"  # the query is not the file name
    assert disk_url_format("https://h/disk.qcow2") == "qcow2"
    with pytest.raises(DriverError) as unknown:
        disk_url_format("https://h/disk.vmdk")
    assert unknown.value.reason == "ImagePullFailed" and ".qcow2" in unknown.value.message
