"""Alert rules: valid for Prometheus, tested with promtool, and naming real metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from _promql import BUILTIN_SERIES, grouping_labels, series_names

from ad_orchestrator import metrics

PROM_DIR = Path(__file__).resolve().parents[2] / "docker" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
PROMTOOL = shutil.which("promtool")
REQUIRED = {
    "AdorchAgentFallbackRateHigh",
    "AdorchAgentNotResponding",
    "AdorchDecisionLatencyP99OverDeadline",
    "AdorchBudgetOverspend",
    "AdorchNoWeightsVersion",
    "AdorchFeedbackStreamLag",
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_required_alerts_exist_with_severity_and_summary() -> None:
    """Each alert the issue asks for is defined, with a severity and a summary."""
    rules = {rule["alert"]: rule for rule in _rules()}

    assert set(rules) >= REQUIRED
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_expression_reads_declared_metrics(rule: dict[str, str]) -> None:
    """Every series an alert reads is declared in `ad_orchestrator.metrics`."""
    names = series_names(rule["expr"])
    known = metrics.metric_names() | BUILTIN_SERIES

    assert names, f"no series found in {rule['alert']}"
    assert names <= known, f"unknown series in {rule['alert']}: {names - known}"


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_label_an_alert_uses_exists(rule: dict[str, str]) -> None:
    """Labels grouped or matched on belong to the series the alert reads."""
    table = metrics.metric_labels()
    allowed = set(TARGET_LABELS)
    for name in series_names(rule["expr"]) - BUILTIN_SERIES:
        allowed |= table[name]

    assert grouping_labels(rule["expr"]) <= allowed


def test_name_finder_sees_through_promql_syntax() -> None:
    """The helper the checks rely on finds names and skips functions and labels."""
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y"}[5m]))) '
        '> on () (max(b) or vector(0.3)) and absent(c{agent="z"})'
    )

    assert series_names(expr) == {"a_bucket", "b", "c"}
    assert grouping_labels(expr) == {"le", "x", "agent"}


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt: prometheus)")
def test_promtool_accepts_the_rules_and_config() -> None:
    """`promtool check rules` and `check config` pass on the shipped files."""
    checks = (["check", "rules", ALERTS.name], ["check", "config", "prometheus.yml"])
    for args in checks:
        done = subprocess.run(
            [str(PROMTOOL), *args], cwd=PROM_DIR, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt: prometheus)")
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    """`promtool test rules` runs every firing and silent case in alerts_test.yml."""
    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", ALERTS_TEST.name],
        cwd=PROM_DIR,
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt: prometheus)")
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation makes promtool fail, so the passing run means something."""
    broken = ALERTS_TEST.read_text().replace("agent: content", "agent: policy", 1)
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    (tmp_path / "alerts_test.yml").write_text(broken)

    done = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )

    assert done.returncode != 0
