"""The benchmark report drawn from recorded results (tests/bench/results: a real `bench.report --quick` run)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from bench._figures import Figure
from bench._render import render
from bench.report import last_error
from PIL import Image

from tests.platform._record import FILE_ENV, RECORD_ENV, record, share

RECORDED = Path(__file__).parent / "results"
FIGURE_IDS = {
    "gateway_throughput",
    "gateway_cpu",
    "warm_added_latency",
    "gateway_route_changes",
    "cold_start_boot",
    "cold_start_restore",
    "cold_start_resume",
    "vm_memory",
    "vms_per_second",
    "cold_start_container",
    "cold_start_morty",
    "build_times",
    "density_per_node",
    "density_memory",
    "scheduler_throughput",
}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    copy = tmp_path / "results"
    shutil.copytree(RECORDED, copy)
    return copy


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Figure]]:
    """The recorded results drawn once, for the tests that only read the report."""
    out = tmp_path_factory.mktemp("report")
    return out, render(RECORDED, out)


def recorded(results: Path, bench: str) -> dict[str, Any]:
    figures: dict[str, Any] = json.loads((results / f"{bench}.json").read_text())["figures"]
    return figures


def edit(results: Path, bench: str, **figures: object) -> None:
    path = results / f"{bench}.json"
    run = json.loads(path.read_text())
    run["figures"] = None if figures.get("failed") else {**run["figures"], **figures}
    if figures.get("failed"):
        run["error"] = figures["failed"]
    path.write_text(json.dumps(run))


def summary_row(report: str, figure_id: str) -> list[str]:
    [line] = [line for line in report.splitlines() if f"](#{figure_id})" in line]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_every_figure_gets_a_chart_that_the_report_shows(rendered: tuple[Path, list[Figure]]) -> None:
    out, drawn = rendered
    assert {figure.id for figure in drawn} == FIGURE_IDS
    assert {path.stem for path in out.glob("*.png")} == FIGURE_IDS
    report = (out / "REPORT.md").read_text()
    for figure_id in FIGURE_IDS:
        with Image.open(out / f"{figure_id}.png") as image:
            assert image.format == "PNG"
            assert image.width > 300 and image.height > 80
        assert f"({figure_id}.png)" in report
        summary_row(report, figure_id)  # exactly one summary row each
    assert "Not measured" not in report


def test_the_report_states_machine_and_reproduce_command(rendered: tuple[Path, list[Figure]]) -> None:
    machine = json.loads((RECORDED / "machine.json").read_text())
    report = (rendered[0] / "REPORT.md").read_text()
    for key in ("commit", "cpu", "kernel", "accel", "date"):
        assert str(machine[key]) in report
    assert f"| cores | {machine['cores']} |" in report
    assert "`uv run python -m bench.report --quick`" in report


def test_figures_ratios_and_targets_come_from_the_results(rendered: tuple[Path, list[Figure]]) -> None:
    report = (rendered[0] / "REPORT.md").read_text()
    gateway, vm = recorded(RECORDED, "gateway_proxy"), recorded(RECORDED, "vm_start")
    title, result, target, verdict = summary_row(report, "gateway_throughput")
    assert result == f"{gateway['ratio']:.2f}x nginx"
    assert (target, verdict) == (">= 0.85x nginx", "pass" if float(gateway["ratio"]) >= 0.85 else "miss")
    _, result, target, verdict = summary_row(report, "cold_start_restore")
    assert result == f"{vm['restore_ratio']:.2f}x raw QEMU"
    assert (target, verdict) == ("<= 1.15x raw QEMU", "pass" if float(vm["restore_ratio"]) <= 1.15 else "miss")
    _, result, target, verdict = summary_row(report, "warm_added_latency")
    assert result == f"{gateway['added_p50_ms']:.3f} ms"
    assert target == "<= 0.3 ms"
    # Figures without a target say so rather than passing.
    assert summary_row(report, "scheduler_throughput")[2:] == ["—", "—"]
    # Each benchmark's own rows are in its section.
    density = recorded(RECORDED, "density")
    for label, value in density["rows"]:
        assert f"| {label} | {value} |" in report


@pytest.mark.parametrize(("ratio", "verdict"), [(1.10, "pass"), (1.16, "miss")])
def test_the_verdict_follows_the_target(results: Path, tmp_path: Path, ratio: float, verdict: str) -> None:
    edit(results, "vm_start", restore_ratio=ratio, boot_ratio=ratio)
    edit(results, "gateway_proxy", churn_errors=1)
    render(results, tmp_path)
    report = (tmp_path / "REPORT.md").read_text()
    assert summary_row(report, "cold_start_restore")[1:] == [f"{ratio:.2f}x raw QEMU", "<= 1.15x raw QEMU", verdict]
    assert summary_row(report, "cold_start_boot")[3] == verdict
    # One error during route changes misses that target, whatever the drop.
    assert summary_row(report, "gateway_route_changes")[3] == "miss"


def test_a_failed_benchmark_is_listed_and_the_others_still_drawn(results: Path, tmp_path: Path) -> None:
    edit(results, "vm_start", failed="exit status 1: TimeoutError: http://10.231.7.2:8080/")
    drawn = render(results, tmp_path)
    vm_ids = {"cold_start_boot", "cold_start_restore", "cold_start_resume", "vm_memory", "vms_per_second"}
    assert {figure.id for figure in drawn} == FIGURE_IDS - vm_ids
    assert not any((tmp_path / f"{figure_id}.png").exists() for figure_id in vm_ids)
    report = (tmp_path / "REPORT.md").read_text()
    not_measured = report.split("## Not measured in this run", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"`bench\.vm_start`: exit status 1: TimeoutError", not_measured)
    assert "cold_start_restore" not in report


def test_resume_is_shown_against_raw_qemu_when_the_run_measured_it(results: Path, tmp_path: Path) -> None:
    vm = recorded(results, "vm_start")
    render(results, tmp_path)
    _, result, target, verdict = summary_row((tmp_path / "REPORT.md").read_text(), "cold_start_resume")
    assert result == f"{vm['rik_resume_median_s'] * 1000:.0f} ms, {vm['resume_ratio']:.2f}x raw QEMU"
    assert (target, verdict) == ("—", "—")  # issue 3 sets no target for resume
    # A result from before the raw reference existed: RIK's figure alone.
    path = results / "vm_start.json"
    run = json.loads(path.read_text())
    for key in ("raw_resume_s", "raw_resume_median_s", "resume_ratio"):
        del run["figures"][key]
    path.write_text(json.dumps(run))
    render(results, tmp_path)
    _, result, _, _ = summary_row((tmp_path / "REPORT.md").read_text(), "cold_start_resume")
    assert result == f"{vm['rik_resume_median_s'] * 1000:.0f} ms"


def test_an_earlier_failed_attempt_is_stated_with_its_exception(results: Path, tmp_path: Path) -> None:
    log = (
        "morty_deploy: build 1/1: hello 3.8 s\n"
        "Traceback (most recent call last):\n"
        '  File "bench/morty_deploy.py", line 90, in deploy\n'
        "RuntimeError: coldvm 1.0.0 failed: deployment failed: BootTimeout: not serving after 60 s\n"
        "RIK-ENTRYPOINT-START\n"
    )
    error = f"exit status 1: {last_error(log)}"
    assert (
        error
        == "exit status 1: RuntimeError: coldvm 1.0.0 failed: deployment failed: BootTimeout: not serving after 60 s"
    )
    path = results / "morty_deploy.json"
    run = json.loads(path.read_text())
    path.write_text(json.dumps({**run, "failed_attempts": [error]}))
    drawn = render(results, tmp_path)
    assert {"cold_start_morty", "build_times"} <= {figure.id for figure in drawn}
    assert f"Attempt 1 failed (the figures are from a later one): {error}" in (tmp_path / "REPORT.md").read_text()


def test_the_fault_tests_figures_render_as_their_own_section(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = tmp_path / "faults.json"
    monkeypatch.setenv(RECORD_ENV, "1")
    monkeypatch.setenv(FILE_ENV, str(faults))
    record("leader", "The leading controller killed", full=False, figures={"takeover s": 4.53})
    windows = [{"window (s)": "0-10", "p50 ms": 3.2, "p99 ms": 8.75}, {"window (s)": "10-20", "p50 ms": 3.1}]
    record("soak", "Soak", full=True, figures={"warm 200": share(1999, 2000), "windows": windows})
    record("leader", "The leading controller killed", full=False, figures={"takeover s": 4.6})  # replaces
    out = tmp_path / "out"
    render(results, out, faults)
    report = (out / "REPORT.md").read_text()
    assert "## Fault tests\n" in report, f"no fault tests section; the report ends: {report[-300:]}"
    section = report.split("## Fault tests\n", 1)[1]
    assert "form of this record: full, quick." in section
    leader, soak = section.split("### The leading controller killed\n", 1)[1].split("### Soak\n")
    assert re.search(r"`leader`, quick form, \d{4}-\d\d-\d\d \d\d:\d\d UTC", leader)
    assert "| takeover s | 4.6 |" in leader and "4.53" not in leader
    assert "`soak`, full form" in soak and "| warm 200 | 99.95 % (1999/2000) |" in soak
    assert "| window (s) | p50 ms | p99 ms |\n|---|---|---|\n| 0-10 | 3.2 | 8.75 |\n| 10-20 | 3.1 |  |" in soak


def test_nothing_is_recorded_unless_asked_and_a_bad_setting_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = tmp_path / "faults.json"
    monkeypatch.setenv(FILE_ENV, str(faults))
    monkeypatch.delenv(RECORD_ENV, raising=False)
    record("leader", "The leading controller killed", full=False, figures={"takeover s": 4.5})
    assert not faults.exists()
    monkeypatch.setenv(RECORD_ENV, "yes")
    with pytest.raises(ValueError, match="PLATFORM_RECORD must be 1"):
        record("leader", "The leading controller killed", full=False, figures={"takeover s": 4.5})
    render(RECORDED, tmp_path / "out", faults)
    assert "## Fault tests" not in (tmp_path / "out" / "REPORT.md").read_text()
