"""From the benchmarks' JSON results to the report's figures: one chart each, with its target if an issue set one.

Targets come from the issues: the gateway's from issue 5 (throughput >= 0.85x nginx, added latency <= 0.3 ms
at p50, route changes without errors and <= 5 % drop), the VM paths' from issue 3 (RIK / raw QEMU <= 1.15x).
The other figures have no target; they are shown with their same-run reference where there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Results = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    id: str  # the chart's file stem
    title: str
    unit: str
    bars: list[tuple[str, float]]  # (label, value); with a reference, the reference comes first
    headline: str  # the figure in words, e.g. "0.62x nginx"
    reference: bool = False  # the first bar is the same-run reference
    target: str = ""  # e.g. "<= 1.15x raw QEMU"; empty when no issue sets one
    met: bool | None = None
    line: float | None = None  # a target drawn across the chart, in the bars' unit
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "—" if self.met is None else ("pass" if self.met else "miss")


def _x(value: float) -> str:
    return f"{value:.2f}x"


def gateway(r: Results) -> list[Figure]:
    ratio = r["ratio"]
    cpu = r["cpu_us_per_request"]
    return [
        Figure(
            "gateway_throughput",
            "Gateway vs nginx: throughput, one worker each",
            "requests/s",
            [("nginx proxy_pass", r["nginx_rps"]), ("gateway", r["gateway_rps"])],
            f"{_x(ratio)} nginx",
            reference=True,
            target=">= 0.85x nginx",
            met=ratio >= 0.85,
            notes=[
                f"ratio per alternating pair: {', '.join(_x(v) for v in r.get('ratios', []))}",
                *(
                    [
                        f"p50 / p99 latency under load: nginx {r['nginx_p50_ms']:.2f} / {r['nginx_p99_ms']:.2f} ms, "
                        f"gateway {r['gateway_p50_ms']:.2f} / {r['gateway_p99_ms']:.2f} ms"
                    ]
                    if "nginx_p50_ms" in r
                    else []
                ),
            ],
        ),
        Figure(
            "gateway_cpu",
            "Gateway vs nginx: worker CPU per request",
            "µs CPU/request",
            [("nginx proxy_pass", cpu["nginx"]), ("gateway", cpu["gateway"])],
            f"nginx CPU / gateway CPU per request: {_x(r['cpu_efficiency_ratio'])}",
            reference=True,
        ),
        Figure(
            "warm_added_latency",
            "Warm added latency at p50, one connection (gateway minus direct)",
            "ms",
            [("added p50", r["added_p50_ms"])],
            f"{r['added_p50_ms']:.3f} ms",
            target="<= 0.3 ms",
            met=r["added_p50_ms"] <= 0.3,
            line=0.3,
        ),
        Figure(
            "gateway_route_changes",
            f"Gateway throughput while {r['changes_per_s']:.0f} route changes/s are applied",
            "requests/s",
            [("no changes", r.get("quiet_rps", 0.0)), ("with changes", r.get("churn_rps", 0.0))],
            f"drop {r['churn_drop'] * 100:.1f} %, {r['churn_errors']} errors",
            reference=True,
            target="no errors, <= 5 % drop at 100 changes/s",
            met=r["churn_errors"] == 0 and r["churn_drop"] <= 0.05,
            notes=[f"{r['changes_applied']} changes applied, {r['changes_per_s']:.0f}/s of the 100/s asked"],
        ),
    ]


def _vm_path(r: Results, path: str, words: str) -> Figure:
    """Boot or restore: RIK against raw QEMU, issue 3's target."""
    ratio = r[f"{path}_ratio"]
    runs = f"RIK runs: {', '.join(f'{v * 1000:.0f}' for v in r[f'rik_{path}_s'])} ms; raw QEMU runs: "
    return Figure(
        f"cold_start_{path}",
        f"Cold start, VM {words} → serving ({r['accel']})",
        "ms",
        [("raw QEMU", r[f"raw_{path}_median_s"] * 1000), ("RIK", r[f"rik_{path}_median_s"] * 1000)],
        f"{_x(ratio)} raw QEMU",
        reference=True,
        target="<= 1.15x raw QEMU",
        met=ratio <= 1.15,
        notes=[runs + f"{', '.join(f'{v * 1000:.0f}' for v in r[f'raw_{path}_s'])} ms"],
    )


def _resume(r: Results) -> Figure:
    """Against raw QEMU's `stop` / `cont` where the run measured it; issue 3 sets no target for resume."""
    rik = ("RIK resume", r["rik_resume_median_s"] * 1000)
    title = f"Cold start, paused VM resume → serving ({r['accel']})"
    if "raw_resume_median_s" not in r:
        return Figure("cold_start_resume", title, "ms", [rik], f"{rik[1]:.0f} ms", notes=["no raw QEMU reference"])
    raw = ("raw QEMU stop / cont", r["raw_resume_median_s"] * 1000)
    return Figure(
        "cold_start_resume",
        title,
        "ms",
        [raw, rik],
        f"{rik[1]:.0f} ms, {_x(r['resume_ratio'])} raw QEMU",
        reference=True,
        notes=[
            "the reference is QMP `cont` on a paused raw VM; RIK's runs from the resume API call "
            "(controller, then riklet) to the first 200"
        ],
    )


def vm(r: Results) -> list[Figure]:
    return [
        _vm_path(r, "boot", "boot"),
        _vm_path(r, "restore", "snapshot restore"),
        _resume(r),
        Figure(
            "vm_memory",
            "Private memory per VM",
            "MiB",
            [
                ("raw QEMU booted", r["raw_boot_private_mib"]),
                ("RIK booted", r["rik_boot_private_mib"]),
                ("raw QEMU restored", r["raw_restore_private_mib"]),
                ("RIK restored", r["rik_restore_private_mib"]),
            ],
            f"{r['rik_restore_private_mib']:.0f} MiB restored, {r['rik_boot_private_mib']:.0f} MiB booted",
        ),
        Figure(
            "vms_per_second",
            f"VMs started per second ({r['clones']} clones restored at once)",
            "VMs/s",
            [("clones / all serving", r["vms_per_second"])],
            f"{r['vms_per_second']:.2f} VMs/s",
        ),
    ]


def container(r: Results) -> list[Figure]:
    ms = 1000
    return [
        Figure(
            "cold_start_container",
            "Cold start, container → serving (one at a time, warm image cache)",
            "ms",
            [("raw runc", r["raw_median_s"] * ms), ("RIK", r["rik_single_median_s"] * ms)],
            f"{_x(r['ratio'])} raw runc",
            reference=True,
            notes=[
                f"first instance with a cold image cache: {r['cold_first_s'] * ms:.0f} ms",
                f"{r['instances']} at once: median {r['rik_parallel_median_s'] * ms:.0f} ms, "
                f"all serving {r['rik_parallel_all_s'] * ms:.0f} ms",
            ],
        )
    ]


def morty(r: Results) -> list[Figure]:
    return [
        Figure(
            "cold_start_morty",
            "Cold start from a snapshot through Morty vs RIK's own restore (→ first 200)",
            "ms",
            [("RIK restore", r["rik_served_ms"]), ("Morty", r["morty_served_ms"])],
            f"{_x(r['ratio_served'])} RIK",
            reference=True,
            notes=[f"start paths seen: {', '.join(r.get('start_paths', []))}"],
        ),
        Figure(
            "build_times",
            "Build times (upload → image pushed) and a VM deployment",
            "s",
            [
                ("hello-world", r["build_hello_s"]),
                ("one dependency", r["build_one_dependency_s"]),
                ("VM deploy (build + boot + snapshot)", r["vm_deploy_s"]),
            ],
            f"{r['build_hello_s']:.1f} s hello-world, {r['build_one_dependency_s']:.1f} s with one dependency",
        ),
    ]


def scheduler(r: Results) -> list[Figure]:
    return [
        Figure(
            "scheduler_throughput",
            f"Scheduler throughput: {r['instances']} instances on {r['nodes']} simulated nodes",
            "instances/s",
            [("control plane (all Running)", r["throughput_per_s"])],
            f"{r['throughput_per_s']:.0f} instances/s",
            notes=[
                f"all Running in {r['all_running_s']:.1f} s; the placement algorithm alone takes "
                f"{r['algorithm_s'] * 1000:.1f} ms ({r['all_running_s'] / r['algorithm_s']:.0f}x)",
                f"placed {r['placed']:.0f}, {r['min_per_node']:.0f}..{r['max_per_node']:.0f} per node",
            ],
        )
    ]


def _at_least(r: Results, kind: str) -> str:
    return ("≥ " if r.get(f"{kind}s_per_node_by_cpu_at_least") else "") + str(r[f"{kind}s_per_node_by_cpu"])


def density(r: Results) -> list[Figure]:
    return [
        Figure(
            "density_per_node",
            f"Density: instances of the Python HTTP image per node ({r['node_cores']} cores, "
            f"{r['node_memory_mib']:.0f} MiB)",
            "instances/node",
            [
                ("containers by memory", r["containers_per_node_by_memory"]),
                ("containers by CPU (idle)", r["containers_per_node_by_cpu"]),
                ("VMs by memory", r["vms_per_node_by_memory"]),
                ("VMs by CPU (idle)", r["vms_per_node_by_cpu"]),
            ],
            f"{r['containers_per_node_by_memory']} containers or {r['vms_per_node_by_memory']} VMs by memory; "
            f"{_at_least(r, 'container')} / {_at_least(r, 'vm')} by idle CPU",
            notes=[
                *(
                    f"no CPU tick measured for idle {kind}s in {r['window_s']:.0f} s: by CPU is a lower bound"
                    for kind in ("container", "vm")
                    if r.get(f"{kind}s_per_node_by_cpu_at_least")
                ),
                f"started {r['containers_started']} containers and {r['vms_started']} restored VMs: all served 200",
                f"the scheduler's limit from requests: {r['containers_per_node_scheduler']} containers, "
                f"{r['vms_per_node_scheduler']} VMs",
            ],
        ),
        Figure(
            "density_memory",
            "Memory per instance (PSS)",
            "MiB",
            [
                ("container", r["container_pss_median_mib"]),
                ("restored VM", r["vm_pss_median_mib"]),
                ("booted VM", r["booted_vm_pss_mib"]),
            ],
            f"{r['container_pss_median_mib']:.1f} MiB per container, {r['vm_pss_median_mib']:.1f} MiB per restored VM",
            notes=[
                f"idle CPU: {r['container_idle_cpu_median'] * 100:.2f} % of a core per container, "
                f"{r['vm_idle_cpu_median'] * 100:.2f} % per restored VM"
            ],
        ),
    ]


# Bench module → how its result becomes figures, in the report's order.
FIGURES: dict[str, Callable[[Results], list[Figure]]] = {
    "gateway_proxy": gateway,
    "vm_start": vm,
    "container_start": container,
    "morty_deploy": morty,
    "density": density,
    "scheduler_throughput": scheduler,
}
