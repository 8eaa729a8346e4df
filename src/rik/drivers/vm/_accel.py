"""Which accelerator VMs use on this host: KVM only if a test guest really boots with it, else TCG.

`/dev/kvm` existing is not enough (a PVM host's KVM runs only PVM-enlightened guests, see
notes/sandboxes-measured-here.md). The answer is cached in a file next to the guest kernel, keyed by
the kernel and the QEMU binary, so a host pays the probe boot once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from rik.drivers.vm._assets import GuestKernel
from rik.drivers.vm._qemu import QEMU, kernel_cmdline

logger = logging.getLogger(__name__)

_PROBE_MARK = b"RIK-PROBE-OK"


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _cache_key(kernel: GuestKernel) -> str:
    qemu = shutil.which(QEMU)
    st = os.stat(qemu) if qemu else None
    return f"{kernel.version}:{kernel.initramfs.name}:{qemu}:{st.st_size if st else 0}:{st.st_mtime if st else 0}"


async def probe_accel(kernel: GuestKernel, cache_file: Path, boot_seconds: float = 30.0) -> str:
    """ "kvm" or "tcg" for this host, from the cache or by booting the guest kernel once with KVM."""
    key = _cache_key(kernel)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cached = json.loads(cache_file.read_text())
        if cached["key"] == key and cached["accel"] in ("kvm", "tcg"):
            return str(cached["accel"])
    accel = "tcg"
    if _kvm_usable():
        started = time.monotonic()
        if await _boots_with_kvm(kernel, boot_seconds):
            accel = "kvm"
        logger.info(
            "KVM probe finished",
            extra={"accel": accel, "probe_seconds": round(time.monotonic() - started, 2)},
        )
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "accel": accel}))
    tmp.replace(cache_file)
    logger.info("VM acceleration chosen", extra={"accel": accel})
    return accel


async def _boots_with_kvm(kernel: GuestKernel, seconds: float) -> bool:
    with tempfile.TemporaryDirectory(prefix="rik-kvm-probe-") as work:
        console = Path(work) / "console.log"
        argv = [
            QEMU, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "128", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(kernel.kernel), "-initrd", str(kernel.initramfs),
            "-append", kernel_cmdline(["rik.probe=1"]),
            "-chardev", f"file,id=console,path={console}", "-serial", "chardev:console",
        ]  # fmt: skip
        with (Path(work) / "qemu.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            async with asyncio.timeout(seconds):
                while proc.returncode is None:
                    if console.is_file() and _PROBE_MARK in console.read_bytes():
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await proc.wait()
        except TimeoutError:
            pass
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        return console.is_file() and _PROBE_MARK in console.read_bytes()
