"""deploy/observability: the alert rules pass promtool, the dashboard loads, and every
metric either names is one the service exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from service.observability import Metrics

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "observability"
# Names in PromQL that are not metrics.
_PROMQL_WORDS = {
    "sum", "max", "rate", "deriv", "by", "and", "le", "histogram_quantile", "humanizeDuration",
}  # fmt: skip


def exported_names() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expression: str) -> set[str]:
    words = set(re.findall(r"[a-z_][a-z0-9_]*", re.sub(r"\{[^}]*\}|\"[^\"]*\"", "", expression)))
    return {w for w in words if w not in _PROMQL_WORDS and ("_" in w)}


def test_the_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        message = "promtool not found: `make test` installs it (Debian package prometheus)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    checked = subprocess.run(
        [promtool, "check", "rules", str(FOLDER / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_metric_the_rules_and_the_dashboard_name_is_exported() -> None:
    rules = (FOLDER / "alerts.yml").read_text()
    expressions = re.findall(r"expr: (.+)", rules)
    dashboard = json.loads((FOLDER / "dashboard.json").read_text())
    expressions += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(dashboard["panels"]) >= 8
    used = set().union(*(metric_names(e) for e in expressions))
    missing = used - exported_names()
    assert not missing, missing
