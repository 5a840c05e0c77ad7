"""The metrics module: declared names, exposition, multiprocess mode, stream lag."""

from __future__ import annotations

import multiprocessing
import urllib.request
from pathlib import Path

import fakeredis
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from ad_orchestrator import metrics


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_declared_metric_is_namespaced_and_listed() -> None:
    """Every series name starts with `adorch_` and the core ones are all listed."""
    names = metrics.metric_names()

    assert all(name.startswith("adorch_") for name in names)
    for expected in (
        "adorch_decisions_total",
        "adorch_decision_latency_seconds_bucket",
        "adorch_agent_latency_seconds_count",
        "adorch_agent_fallbacks_total",
        "adorch_no_bids_total",
        "adorch_policy_denials_total",
        "adorch_budget_spent",
        "adorch_budget_remaining",
        "adorch_weights_version",
        "adorch_feedback_events_total",
        "adorch_feedback_duplicates_total",
        "adorch_feedback_stream_lag_seconds",
        "adorch_decision_deadline_seconds",
    ):
        assert expected in names


def test_labels_of_histogram_buckets_include_le() -> None:
    """Bucket series carry `le` on top of the metric's own labels."""
    labels = metrics.metric_labels()

    assert labels["adorch_agent_latency_seconds_bucket"] == {"agent", "le"}
    assert labels["adorch_agent_latency_seconds_count"] == {"agent"}


def test_single_process_render_shows_a_counter_moving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a multiprocess folder the default registry is rendered."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    labels = {"kind": "click"}
    before = REGISTRY.get_sample_value("adorch_feedback_events_total", labels) or 0.0

    metrics.FEEDBACK_EVENTS.labels(kind="click").inc(3)
    body, content_type = metrics.render()

    assert content_type.startswith("text/plain")
    value = _samples(body)[("adorch_feedback_events_total", (("kind", "click"),))]
    assert value == before + 3


def _child_records(agent: str, seconds: float) -> None:
    # A spawned interpreter inherits PROMETHEUS_MULTIPROC_DIR from the parent's
    # environment and so creates its metrics in multiprocess mode.
    from ad_orchestrator import metrics as child_metrics

    child_metrics.AGENT_FALLBACKS.labels(agent=agent).inc()
    child_metrics.AGENT_LATENCY.labels(agent=agent).observe(seconds)
    child_metrics.WEIGHTS_VERSION.labels(agent=agent).set(4)


def test_multiprocess_exposition_adds_up_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples written by two separate processes are summed in one scrape."""
    folder = tmp_path / "prom"
    metrics.prepare_multiprocess_dir(folder)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    context = multiprocessing.get_context("spawn")
    for seconds in (0.004, 0.04):
        child = context.Process(target=_child_records, args=("content", seconds))
        child.start()
        child.join(60)
        assert child.exitcode == 0

    samples = _samples(metrics.render()[0])

    assert samples[("adorch_agent_fallbacks_total", (("agent", "content"),))] == 2
    assert samples[("adorch_agent_latency_seconds_count", (("agent", "content"),))] == 2
    content = (("agent", "content"),)
    bucket = ("adorch_agent_latency_seconds_bucket", (*content, ("le", "0.005")))
    assert samples[bucket] == 1
    assert samples[("adorch_weights_version", (("agent", "content"),))] == 4


def test_prepare_multiprocess_dir_removes_a_previous_run(tmp_path: Path) -> None:
    """Stale sample files are deleted; other files are left alone."""
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("x")

    metrics.prepare_multiprocess_dir(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_metrics_server_serves_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """`start_metrics_server` answers a real HTTP scrape with the deadline gauge."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    server = metrics.start_metrics_server(0, "127.0.0.1", deadline_s=0.25)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            body = response.read()
    finally:
        server.shutdown()
        server.server_close()

    assert _samples(body)[("adorch_decision_deadline_seconds", ())] == 0.25


def test_feedback_stream_collector_reports_group_lag() -> None:
    """Lag counts undelivered entries and the time gap to the newest entry."""
    client = fakeredis.FakeRedis()
    client.xadd("fb", {"k": "1"}, id="1000-0")
    client.xgroup_create("fb", "trainer", id="0")
    client.xadd("fb", {"k": "2"}, id="3000-0")
    client.xadd("fb", {"k": "3"}, id="5500-0")
    client.xreadgroup("trainer", "c1", {"fb": ">"}, count=1)

    registry = metrics.CollectorRegistry()
    registry.register(metrics.FeedbackStreamCollector(client, "fb"))
    samples = _samples(metrics.render(registry)[0])

    assert samples[("adorch_feedback_stream_up", ())] == 1
    assert samples[("adorch_feedback_stream_length", ())] == 3
    group = (("group", "trainer"),)
    assert samples[("adorch_feedback_stream_lag_entries", group)] == 2
    assert samples[("adorch_feedback_stream_lag_seconds", group)] == 4.5


def test_feedback_stream_collector_reports_down_instead_of_failing() -> None:
    """A Redis error yields `up 0` and the rest of the scrape still renders."""

    class Broken:
        def exists(self, key: str) -> int:
            raise ConnectionError("redis is gone")

    registry = metrics.CollectorRegistry()
    registry.register(metrics.FeedbackStreamCollector(Broken(), "fb"))

    samples = _samples(metrics.render(registry)[0])

    assert samples == {("adorch_feedback_stream_up", ()): 0.0}


def test_missing_stream_reads_as_empty() -> None:
    """Before the first feedback event the stream has length 0 and no groups."""
    registry = metrics.CollectorRegistry()
    registry.register(metrics.FeedbackStreamCollector(fakeredis.FakeRedis(), "none"))

    samples = _samples(metrics.render(registry)[0])

    assert samples[("adorch_feedback_stream_length", ())] == 0


def test_budget_collector_reads_spend_and_remaining_from_the_ledger(
    tmp_path: Path,
) -> None:
    """Spend (spent plus reserved) and remaining budget come from the ledger."""
    from ad_orchestrator.ledger import MICROS, BudgetLedger, Campaign
    from ad_orchestrator.settings import Settings

    settings = Settings(state_dir=tmp_path)
    client = fakeredis.FakeRedis()
    campaigns = {
        "c1": Campaign(budget=10.0, base_cpm=1.0, max_cpm=2.0),
        "c2": Campaign(budget=5.0, base_cpm=1.0, max_cpm=2.0),
    }
    client.hset(
        settings.key("budget", "c1"),
        mapping={"spent": int(2.5 * MICROS), "reserved": int(0.5 * MICROS)},
    )
    registry = metrics.CollectorRegistry()
    registry.register(
        metrics.BudgetCollector(BudgetLedger(client, settings, campaigns))
    )

    samples = _samples(metrics.render(registry)[0])

    assert samples[("adorch_budget_spent", (("campaign", "c1"),))] == 3.0
    assert samples[("adorch_budget_remaining", (("campaign", "c1"),))] == 7.0
    assert samples[("adorch_budget_remaining", (("campaign", "c2"),))] == 5.0
