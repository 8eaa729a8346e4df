"""How a container's OCI config is derived from the image and the workload spec (no root needed)."""

from __future__ import annotations

from typing import Any

from rik.drivers.container._spec import Limits, container_config, process_args, process_env
from rik.images import ImageConfig
from rik.model import WorkloadSpec

IMAGE = ImageConfig(entrypoint=["/entry"], cmd=["--default"], env={"PATH": "/bin", "A": "image", "B": "image"})


def _spec(**fields: Any) -> WorkloadSpec:
    return WorkloadSpec(image="x", **fields)


def test_args_follow_entrypoint_and_cmd_rules() -> None:
    assert process_args(_spec(), IMAGE) == ["/entry", "--default"]
    assert process_args(_spec(args=["--other"]), IMAGE) == ["/entry", "--other"]
    assert process_args(_spec(command=["/bin/sh"]), IMAGE) == ["/bin/sh"]
    assert process_args(_spec(command=["/bin/sh"], args=["-c", "true"]), IMAGE) == ["/bin/sh", "-c", "true"]


def test_spec_env_overrides_image_env() -> None:
    env = process_env(_spec(env={"B": "spec", "C": "spec"}), IMAGE, "web-1")
    assert env == ["PATH=/bin", "HOSTNAME=web-1", "A=image", "B=spec", "C=spec"]


def test_config_is_detached_in_the_instance_netns_with_limits() -> None:
    template: dict[str, Any] = {
        "process": {"terminal": True, "args": ["sh"], "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}], "resources": {}},
    }
    config = container_config(
        template,
        args=["/entry"],
        env=["A=1"],
        cwd="/srv",
        hostname="web-1",
        rootfs="/var/rik/web-1/rootfs",
        netns_path="/run/netns/rik-br-abc",
        cgroups_path="/rik-x/web-1",
        limits=Limits(cpu_millicores=500, memory_mib=64, pids=100),
    )
    assert config["process"]["terminal"] is False
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert (config["process"]["args"], config["process"]["cwd"]) == (["/entry"], "/srv")
    assert config["root"] == {"path": "/var/rik/web-1/rootfs", "readonly": False}
    assert {"type": "network", "path": "/run/netns/rik-br-abc"} in config["linux"]["namespaces"]
    assert {"type": "network"} not in config["linux"]["namespaces"]
    resources = config["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 * 1024 * 1024}
    assert resources["cpu"] == {"shares": 512, "quota": 50_000, "period": 100_000}
    assert resources["pids"] == {"limit": 100}
    assert template["process"]["terminal"] is True  # the cached template is not modified
