"""Run every benchmark and write docs/benchmarks/REPORT.md with one chart per figure.

    uv run python -m bench.report            # full rounds (about half an hour)
    uv run python -m bench.report --quick    # fewer rounds (about ten minutes)
    uv run python -m bench.report --render-only   # redraw from docs/benchmarks/results/

The fault tests' figures (`PLATFORM_RECORD=1 uv run pytest tests/platform [--full]` writes them to
docs/benchmarks/faults.json) are rendered as the report's last section.

Each benchmark runs as its own process (`python -m bench.<name> ...`) with `$BENCH_RESULT` naming the
file its figures go to; a benchmark that fails is listed in the report as not measured, and the others
still run. A failing benchmark is run again (`--attempts`, 2 in all by default) and the report says why an
earlier attempt failed: on a loaded machine, a TCG guest may miss a boot deadline. The results (JSON) are
kept next to the report so it can be redrawn without rerunning.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._figures import FIGURES
from bench._harness import RESULT_ENV
from bench._render import render

EXCEPTION = re.compile(r"^[A-Za-z_.]*(Error|Exception|Timeout|Exit)\b.*")
ROOT = Path(__file__).resolve().parent.parent
ACCEL_FILE = Path("/var/lib/rik/guest/accel.json")

# name → (full arguments, quick arguments, timeout in seconds)
BENCHES: dict[str, tuple[list[str], list[str], int]] = {
    "scheduler_throughput": ([], ["--nodes", "20", "--instances", "200"], 900),
    "gateway_proxy": (["--rounds", "3", "--duration", "8"], ["--rounds", "3", "--duration", "4"], 900),
    "container_start": (["--instances", "10"], ["--instances", "3"], 900),
    "vm_start": (["--runs", "5", "--clones", "5"], ["--runs", "2", "--boot-runs", "1", "--clones", "2"], 1800),
    "density": (["--instances", "8", "--vms", "3"], ["--instances", "4", "--vms", "2", "--window", "3"], 900),
    "morty_deploy": (["--builds", "3", "--runs", "5"], ["--builds", "1", "--runs", "2"], 1800),
}
assert set(BENCHES) == set(FIGURES)


def run_bench(name: str, argv: list[str], timeout: int, logs: Path) -> dict[str, Any]:
    result_file = logs / f"{name}.json"
    log = logs / f"{name}.log"
    started = time.monotonic()
    error = None
    with log.open("wb") as output:
        try:
            returncode = subprocess.run(
                [sys.executable, "-m", f"bench.{name}", *argv],
                cwd=ROOT,
                env={**os.environ, RESULT_ENV: str(result_file)},
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            returncode, error = -1, f"timed out after {timeout} s"
    figures = json.loads(result_file.read_text()) if returncode == 0 and result_file.is_file() else None
    if figures is None and error is None:
        error = f"exit status {returncode}: {last_error(log.read_text(errors='replace'))}"
    return {
        "bench": name,
        "argv": argv,
        "elapsed_s": time.monotonic() - started,
        "returncode": returncode,
        "figures": figures,
        "error": error,
    }


def last_error(log: str) -> str:
    """The exception a failed benchmark ended with (its log's last `SomethingError: ...` line), else its last line."""
    lines = log.strip().splitlines() or [""]
    errors = [line for line in lines if EXCEPTION.match(line)]
    return (errors or lines)[-1][:300]


def machine_info(mode: str) -> dict[str, Any]:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    accel = json.loads(ACCEL_FILE.read_text()).get("accel", "") if ACCEL_FILE.is_file() else "not probed"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
        "mode": mode,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "kernel": platform.release(),
        "accel": accel,
        "load_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds: about ten minutes instead of half an hour")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run these; keep the others' results")
    parser.add_argument("--attempts", type=int, default=2, help="runs of a failing benchmark, in all")
    parser.add_argument("--render-only", action="store_true", help="redraw the report from the stored results")
    parser.add_argument(
        "--faults", type=Path, help="the fault tests' recorded figures (default: faults.json in --out, if there)"
    )
    args = parser.parse_args()
    results = args.out / "results"
    if not args.render_only:
        results.mkdir(parents=True, exist_ok=True)
        machine = machine_info("quick" if args.quick else "full")
        started = time.monotonic()
        logs = Path(tempfile.mkdtemp(prefix="bench-report-"))
        for name in args.only or BENCHES:
            full, quick, timeout = BENCHES[name]
            print(f"bench.report: {name} ...", file=sys.stderr, flush=True)
            failures = []
            for _ in range(args.attempts):
                run = run_bench(name, quick if args.quick else full, timeout, logs)
                if run["figures"] is not None:
                    break
                failures.append(run["error"])
            run["failed_attempts"] = failures[: len(failures) - (run["figures"] is None)]
            outcome = "ok" if run["figures"] else run["error"]
            print(f"bench.report: {name}: {outcome} ({run['elapsed_s']:.0f} s)", file=sys.stderr, flush=True)
            (results / f"{name}.json").write_text(json.dumps(run, indent=2) + "\n")
            if name == "vm_start" and run["figures"]:
                machine["accel"] = run["figures"]["accel"]
        machine["load_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
        machine["elapsed_s"] = time.monotonic() - started
        stored = results / "machine.json"
        if args.only and stored.is_file():
            # The report stays the earlier run's; it says which benchmarks were run again, when and on what.
            rerun = {key: machine[key] for key in ("date", "commit", "mode", "load_start", "load_end")}
            machine = json.loads(stored.read_text())
            machine.setdefault("reruns", []).append({"benches": sorted(args.only), **rerun})
        stored.write_text(json.dumps(machine, indent=2) + "\n")
        print(f"bench.report: logs in {logs}", file=sys.stderr)
    figures = render(results, args.out, args.faults or args.out / "faults.json")
    print(f"bench.report: {args.out / 'REPORT.md'}: {len(figures)} figures")


if __name__ == "__main__":
    main()
