"""The QEMU `-M microvm` command line of an instance, and starting it daemonized inside a network namespace.

QEMU runs with `-daemonize`: the command returns once the machine is set up (so errors such as too much
memory come back as its exit status and stderr), and the VM process is not the riklet's child: it survives a
riklet restart and is adopted again by pid file and QMP socket. `nsenter --net` (unlike `ip netns exec`)
touches no mounts: QEMU only needs /dev/net/tun (and /dev/kvm).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rik.drivers.vm._link import GUEST_MAC, TAP

logger = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
#: Kernel arguments every guest gets (TCG-friendly; `tsc_early_khz` is added from the host).
BASE_KERNEL_ARGS = (
    "console=ttyS0", "quiet", "reboot=t", "panic=-1", "mitigations=off", "8250.nr_uarts=1",
    "random.trust_cpu=on", "pci=off",
)  # fmt: skip


def host_tsc_khz() -> int | None:
    """The host TSC frequency in kHz (a TCG microvm guest hangs calibrating its timer without it)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text().strip())
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_cmdline(extra: list[str], root_device: str | None = None) -> str:
    args = list(BASE_KERNEL_ARGS)
    khz = host_tsc_khz()
    if khz:
        args.append(f"tsc_early_khz={khz}")
    if root_device:
        args += [f"root={root_device}", "rw"]
    return " ".join([*args, *extra])


@dataclass(frozen=True)
class MachineConfig:
    """What a VM is made of; persisted with snapshots, since a restore must rebuild the same machine."""

    memory_mib: int
    vcpus: int
    accel: str
    kernel: str
    initramfs: str | None
    cmdline: str

    def to_json(self) -> dict[str, object]:
        return {
            "memory_mib": self.memory_mib, "vcpus": self.vcpus, "accel": self.accel, "kernel": self.kernel,
            "initramfs": self.initramfs, "cmdline": self.cmdline,
        }  # fmt: skip

    @classmethod
    def from_json(cls, document: dict[str, object]) -> MachineConfig:
        initramfs = document.get("initramfs")
        return cls(
            memory_mib=int(str(document["memory_mib"])),
            vcpus=int(str(document["vcpus"])),
            accel=str(document["accel"]),
            kernel=str(document["kernel"]),
            initramfs=str(initramfs) if initramfs else None,
            cmdline=str(document["cmdline"]),
        )


@dataclass(frozen=True)
class InstanceFiles:
    root_disk: Path
    config_disk: Path
    console_log: Path
    qmp_socket: Path
    pid_file: Path
    extra: list[str] = field(default_factory=list)


def qemu_argv(machine: MachineConfig, files: InstanceFiles, *, name: str, incoming: str | None = None) -> list[str]:
    """`incoming`: a migration URI to load at start (`fd:N` for a snapshot file QEMU inherits), or "defer"."""
    accel = ["-accel", "kvm", "-cpu", "host"] if machine.accel == "kvm" else ["-accel", "tcg,tb-size=32"]
    argv = [
        QEMU, "-name", name, "-M", "microvm", *accel,
        "-m", str(machine.memory_mib), "-smp", str(machine.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", machine.kernel,
    ]  # fmt: skip
    if machine.initramfs:
        argv += ["-initrd", machine.initramfs]
    argv += ["-append", machine.cmdline]
    argv += [
        "-chardev", f"file,id=console,path={files.console_log},append=on", "-serial", "chardev:console",
        "-qmp", f"unix:{files.qmp_socket},server=on,wait=off",
        "-drive", f"id=root,file={files.root_disk},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"id=config,file={files.config_disk},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=config",
        "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
        "-device", f"virtio-net-device,netdev=net0,mac={GUEST_MAC}",
        "-daemonize", "-pidfile", str(files.pid_file),
    ]  # fmt: skip
    if incoming:
        argv += ["-incoming", incoming]
    return [*argv, *files.extra]


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None and shutil.which("qemu-img") is not None


async def launch(argv: list[str], netns_path: str | None, log: Path, pass_fds: tuple[int, ...] = ()) -> int:
    """Run QEMU (daemonizing) in the namespace; stdout/stderr go to `log`; `pass_fds` are inherited (a
    snapshot file for `-incoming fd:N`). Returns QEMU's exit status."""
    prefix = ["nsenter", f"--net={netns_path}"] if netns_path else []
    with log.open("ab") as output:
        proc = await asyncio.create_subprocess_exec(
            *prefix, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True,
            pass_fds=pass_fds,
        )  # fmt: skip
        return await proc.wait()
