"""What drivers find again after a restart, and the log tails they report."""

from __future__ import annotations

from pathlib import Path

from rik.drivers._files import read_tail, recorded_instance_ids


def test_recorded_instances_skip_half_written_and_foreign_directories(tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    assert recorded_instance_ids(instances) == []
    for directory, content in (("b", '{"id": "web-2"}'), ("a", '{"id": "web-1"}'), ("torn", '{"id": "w'),
                               ("other", '{"name": "x"}'), ("list", "[1]")):  # fmt: skip
        (instances / directory).mkdir(parents=True)
        (instances / directory / "instance.json").write_text(content)
    (instances / "empty").mkdir()
    assert recorded_instance_ids(instances) == ["web-1", "web-2"]


def test_read_tail_returns_the_end_of_a_log_or_nothing(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert read_tail(log, 10) == b""
    log.write_bytes(b"booting\nready on :8080\n")
    assert read_tail(log, 6) == b":8080\n"
    assert read_tail(log, None) == b"booting\nready on :8080\n"
    assert read_tail(log, 1000) == b"booting\nready on :8080\n"
