"""A real prefork worker exposes moving metrics from all its processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ad_orchestrator.settings import REPO_ROOT, Settings, load_settings
from ad_orchestrator.workers import WorkerProcess, start_worker
from examples.web.launch import free_port
from examples.web.samples import sample_ad_request

pytestmark = pytest.mark.integration
AGENTS = ("context", "content", "budget", "policy")


@dataclass
class MeteredWorker:
    worker: WorkerProcess
    metrics_url: str
    settings: Settings
    folder: Path


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeteredWorker]:
    from ad_orchestrator.app import app

    folder = tmp_path_factory.mktemp("prom-multiproc")
    (folder / "counter_99999.db").write_bytes(b"left over by a previous run")
    queue = f"{os.environ['ADORCH_QUEUE']}-metrics"
    port = free_port()
    env = {
        "ADORCH_QUEUE": queue,
        "ADORCH_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
    }
    worker = start_worker(
        app,
        "metrics",
        queue=queue,
        logdir=tmp_path_factory.mktemp("metrics-logs"),
        extra_env=env,
    )
    settings = load_settings(queue=queue)
    try:
        from ad_orchestrator.client import decide

        # Each pool child loads its models on its first batch: keep that out of
        # the measured traffic, and generous on a loaded machine.
        for _ in range(2):
            decide(sample_ad_request(tmax_ms=60_000), settings=settings)
        yield MeteredWorker(
            worker, f"http://127.0.0.1:{port}/metrics", settings, folder
        )
    finally:
        worker.stop()
        print(worker.log_text()[-4000:])


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(url, timeout=5).text
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def test_worker_clears_a_previous_runs_files_at_boot(metered: MeteredWorker) -> None:
    """Sample files of a previous run are removed when the worker starts."""
    assert not (metered.folder / "counter_99999.db").exists()


def test_worker_metrics_move_after_real_decisions(metered: MeteredWorker) -> None:
    """Agent latency, decisions and feedback counters grow with real traffic."""
    from ad_orchestrator.app import record_feedback
    from ad_orchestrator.client import decide

    before = _scrape(metered.metrics_url)
    decisions = [
        decide(sample_ad_request(tmax_ms=20_000), settings=metered.settings)
        for _ in range(4)
    ]
    for decision in decisions:
        event = {
            "event_id": uuid.uuid4().hex,
            "decision_id": decision.decision_id,
            "kind": "impression",
            "value": 2.0,
        }
        record_feedback.apply_async((event,), queue=metered.settings.queue).get(
            timeout=20
        )
    after = _scrape(metered.metrics_url)

    assert not any(d.fallback for d in decisions)
    for agent in AGENTS:
        name = "adorch_agent_latency_seconds_count"
        grown = _total(after, name, agent=agent) - _total(before, name, agent=agent)
        assert grown >= 4, agent
    latency = "adorch_decision_latency_seconds_count"
    assert _total(after, latency) - _total(before, latency) == 4
    assert (
        _total(after, "adorch_decisions_total")
        - _total(before, "adorch_decisions_total")
        == 4
    )
    events = "adorch_feedback_events_total"
    grown = _total(after, events, kind="impression")
    assert grown - _total(before, events, kind="impression") == 4
    assert {lab for (n, lab) in after if n == "adorch_weights_version"} >= {
        (("agent", "content"),)
    }


def test_sidecar_exporter_reads_the_same_folder(
    metered: MeteredWorker, tmp_path: Path
) -> None:
    """`python -m ad_orchestrator.metrics` serves the worker's samples and stream."""
    port = free_port()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metered.folder))
    log = (tmp_path / "exporter.log").open("wb")
    exporter = subprocess.Popen(
        [sys.executable, "-m", "ad_orchestrator.metrics", "--port", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        samples = {}
        for _ in range(100):
            try:
                samples = _scrape(url)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        worker = _scrape(metered.metrics_url)
    finally:
        exporter.terminate()
        exporter.wait(10)
        log.close()

    name = "adorch_agent_latency_seconds_count"
    assert _total(samples, name, agent="policy") == _total(worker, name, agent="policy")
    assert samples[("adorch_feedback_stream_up", ())] == 1
    assert samples[("adorch_feedback_stream_length", ())] >= 4
    # Impressions settled at 2.0 CPM on the campaigns that won.
    assert _total(samples, "adorch_budget_spent") > 0
    assert _total(samples, "adorch_budget_remaining") > 0
