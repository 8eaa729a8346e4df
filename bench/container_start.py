"""Start-to-serving time of N container instances through RIK, against raw runc in the same run.

RIK: a real controller and riklet; one workload of N replicas of a busybox httpd image from the
bundled registry. Each instance's time runs from the API call that created the workload to its first
HTTP 200 at the address the riklet reports (scheduling, image pull on the first, overlay, netns,
veth, cgroups, runc, port exposure and status reporting included).

Reference: the same image unpacked once, started N times one after the other with `runc run -d` in
the host's network namespace (no overlay, no netns, no orchestration), timed from the call to the
first HTTP 200. The ratio RIK / raw says what orchestration and isolation cost per instance.

    uv run python bench/container_start.py [--instances 10]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tests.support.images import build_busybox_httpd_image, push_image
from tests.support.registry import start_registry, stop_registry

from bench._harness import controller, free_port, report, wait_http
from rik.client import ApiError, RikClient
from rik.network import NodeNetwork

BRIDGE = "rikbench0"


async def first_ok(url: str, deadline: float) -> float:
    async with httpx.AsyncClient(timeout=1) as http:
        while time.perf_counter() < deadline:
            try:
                if (await http.get(url)).status_code == 200:
                    return time.perf_counter()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.005)
    raise TimeoutError(url)


async def rik_round(url: str, image: str, count: int) -> list[float]:
    async with RikClient(url, timeout=60) as client:
        since = (await client.list_instances()).resource_version
        started = time.perf_counter()
        await client.create_workload(
            {
                "kind": "Pod",
                "metadata": {"name": "bench"},
                "spec": {
                    "image": image,
                    "replicas": count,
                    "ports": [{"port": 8080}],
                    "resources": {"cpu": 50, "memory": 32},
                },
            }
        )
        deadline = started + 120
        probes: dict[str, asyncio.Task[float]] = {}
        async for event in client.watch(since=since, resources="instances", workload="bench"):
            obj = event.object
            if obj["phase"] == "Running" and obj["id"] not in probes:
                probes[obj["id"]] = asyncio.create_task(first_ok(f"http://{obj['address']}:8080/", deadline))
            if obj["phase"] == "Failed":
                raise RuntimeError(f"instance failed: {obj['reason']}: {obj['message']}")
            if len(probes) == count:
                break
        served = await asyncio.gather(*probes.values())
        return [t - started for t in served]


async def delete_bench_workload(url: str) -> None:
    """Delete the workload and wait until the riklet has removed every instance."""
    async with RikClient(url, timeout=60) as client:
        try:
            await client.delete_workload("bench")
        except ApiError as exc:
            if exc.status != 404:
                raise
        deadline = time.monotonic() + 60
        while (await client.list_instances(workload="bench")).items and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


async def measure_rik(url: str, image: str, count: int) -> tuple[float, list[float], list[float]]:
    """(cold first instance, one at a time from a warm cache, `count` at once)."""
    try:
        # The first round pulls and unpacks the image; the others start from the cache.
        [cold] = await rik_round(url, image, 1)
        await delete_bench_workload(url)
        single = []
        for _ in range(5):
            single += await rik_round(url, image, 1)
            await delete_bench_workload(url)
        return cold, single, await rik_round(url, image, count)
    finally:
        await delete_bench_workload(url)


def raw_runc_round(oci_ref: str, workdir: Path, count: int) -> list[float]:
    bundle = workdir / "raw-bundle"
    layout, _, tag = oci_ref.removeprefix("oci:").rpartition(":")
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle)], check=True, capture_output=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["root"] = {"path": str(bundle / "rootfs"), "readonly": True}
    config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
    root = workdir / "runc-root"
    times = []
    for index in range(count):
        port = free_port()
        config["process"]["args"] = ["/bin/busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"]
        instance = workdir / f"raw-{index}"
        instance.mkdir()
        (instance / "config.json").write_text(json.dumps(config))
        with (instance / "log").open("wb") as log:
            started = time.perf_counter()
            subprocess.run(
                ["runc", "--root", str(root), "run", "-d", "--bundle", str(instance), f"rawbench{index}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
            )
            served = asyncio.run(first_ok(f"http://127.0.0.1:{port}/", started + 30))
        times.append(served - started)
    for index in range(count):
        subprocess.run(["runc", "--root", str(root), "delete", "-f", f"rawbench{index}"], capture_output=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("container_start: needs root (runc, network namespaces)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        oci_ref = build_busybox_httpd_image(workdir / "layout", "bench", index_html="bench\n")
        registry = start_registry(workdir / "registry")
        riklet_dir = workdir / "riklet"
        riklet = None
        try:
            image = push_image(oci_ref, registry.address, "bench/httpd:1")
            with controller(workdir) as url:
                port = free_port()
                log = (workdir / "riklet.log").open("wb")
                riklet = subprocess.Popen(
                    [sys.executable, "-m", "rik.riklet", "--name", "bench", "--controller", url]
                    + ["--address", "127.0.0.1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(riklet_dir)]
                    + ["--bridge", BRIDGE, "--log-level", "WARNING"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
                wait_http(f"http://127.0.0.1:{port}/healthz", 60, riklet)
                cold, single, rik = asyncio.run(measure_rik(url, image, args.instances))
                riklet.terminate()
                riklet.wait(timeout=15)
            raw = raw_runc_round(oci_ref, workdir, args.instances)
        finally:
            if riklet is not None and riklet.poll() is None:
                riklet.kill()
            stop_registry(registry)
            network = NodeNetwork(BRIDGE, ipaddress.IPv4Network("10.88.0.0/24"), riklet_dir / "network", "127.0.0.1")
            asyncio.run(network.teardown())
            shutil.rmtree(riklet_dir, ignore_errors=True)
    single_median, raw_median = statistics.median(single), statistics.median(raw)
    rik_median = statistics.median(rik)
    report(
        f"container start-to-serving: {args.instances} instances",
        [
            ("first instance, cold image cache", f"{cold * 1000:.0f} ms"),
            ("RIK, one at a time: median of 5", f"{single_median * 1000:.0f} ms"),
            ("raw runc, one at a time: median", f"{raw_median * 1000:.0f} ms"),
            ("ratio RIK / raw runc, one at a time", f"{single_median / raw_median:.2f}x"),
            (f"RIK, {args.instances} at once: median", f"{rik_median * 1000:.0f} ms"),
            (f"RIK, {args.instances} at once: all serving", f"{max(rik) * 1000:.0f} ms"),
        ],
        {
            "instances": args.instances,
            "cold_first_s": cold,
            "rik_single_median_s": single_median,
            "raw_median_s": raw_median,
            "ratio": single_median / raw_median,
            "rik_parallel_median_s": rik_median,
            "rik_parallel_all_s": max(rik),
        },
    )


if __name__ == "__main__":
    main()
