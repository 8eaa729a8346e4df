"""Bad manifests through rikctl: a non-zero exit code and one line naming the problem, never a traceback."""

from __future__ import annotations

import json

import pytest

from ._cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GOOD = """\
apiVersion: rik/v1
kind: {kind}
metadata:
  name: {name}
spec:
  image: 127.0.0.1:5000/e2e/httpd:1
  replicas: {replicas}
"""

CASES = {
    # id: (manifest, exit code, fragments the error line must contain)
    "malformed-yaml": ("apiVersion: rik/v1\nkind: Pod\nmetadata: {name: web\n", 2, ["malformed YAML", "line 3"]),
    "not-a-mapping": ("- kind: Pod\n", 2, ["document 1 is a list, not a mapping"]),
    "unknown-kind": (GOOD.format(kind="Deployment", name="web", replicas=1), 1, ["kind", "'Pod' or 'VM'"]),
    "oversized-name": (GOOD.format(kind="Pod", name="a" * 53, replicas=1), 1, ["metadata.name", "at most 52"]),
    "name-pattern": (
        GOOD.format(kind="Pod", name="Web_1", replicas=1),
        1,
        ["metadata.name", "'^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"],  # printed whole, not read as markup
    ),
    "wrong-type": (GOOD.format(kind="Pod", name="web", replicas='"three"'), 1, ["spec.replicas", "must be an integer"]),
    "unknown-field": (GOOD.format(kind="Pod", name="web", replicas=1) + "  replica: 2\n", 1, ["spec.replica", "Extra"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rikctl_rejects_bad_input_in_one_line(controller_only: Cluster, case: str) -> None:
    text, code, fragments = CASES[case]
    result = controller_only.rikctl_sync("apply", "-f", str(controller_only.write_manifest(case, text)))
    assert result.code == code, result
    assert result.stdout == "", result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result


def test_nothing_was_created_by_bad_input(controller_only: Cluster) -> None:
    result = controller_only.rikctl_sync("get", "workloads", "-o", "json")
    assert (result.code, json.loads(result.stdout)) == (0, []), result
