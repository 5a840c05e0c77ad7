"""Grafana provisioning: the dashboard's panels query metrics that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _promql import BUILTIN_SERIES, grouping_labels, series_names

from ad_orchestrator import metrics

GRAFANA = Path(__file__).resolve().parents[2] / "docker" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "adorch.json"


def _targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def test_dashboard_covers_every_metric_family() -> None:
    """Each declared metric appears in at least one panel."""
    used = set().union(*(series_names(expr) for _title, expr in _targets()))
    families = {
        name.removesuffix(suffix)
        for name in used
        for suffix in ("_total", "_bucket", "_count", "_sum", "")
        if name.endswith(suffix)
    }

    for metric in metrics._DECLARED:  # noqa: SLF001 - the declared list
        assert metric.describe()[0].name in families


@pytest.mark.parametrize(("title", "expr"), _targets())
def test_every_panel_query_names_real_metrics(title: str, expr: str) -> None:
    """No panel queries a series the service does not export."""
    names = series_names(expr)
    known = metrics.metric_names() | BUILTIN_SERIES

    assert names, f"panel {title!r} reads no series"
    assert names <= known, f"panel {title!r} reads unknown {names - known}"


@pytest.mark.parametrize(("title", "expr"), _targets())
def test_every_panel_groups_by_labels_that_exist(title: str, expr: str) -> None:
    """Legends and groupings use labels the queried series carry."""
    table = metrics.metric_labels()
    allowed = {"alertname", "alertstate"}
    for name in series_names(expr) - BUILTIN_SERIES:
        allowed |= table[name]

    assert grouping_labels(expr) <= allowed, title


def test_panels_use_the_provisioned_datasource_and_do_not_overlap() -> None:
    """Panels point at the provisioned datasource uid and have distinct ids."""
    dashboard = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = source["datasources"][0]["uid"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    cells = set()

    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid
        grid = panel["gridPos"]
        for dx in range(grid["w"]):
            for dy in range(grid["h"]):
                cell = (grid["x"] + dx, grid["y"] + dy)
                assert cell not in cells, f"{panel['title']} overlaps another panel"
                cells.add(cell)


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    """The dashboard provider loads files from where compose mounts them."""
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "adorch.yml").read_text()
    )

    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
