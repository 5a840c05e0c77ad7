"""Every Prometheus metric of the service, named once, and how they are exposed.

Workers run as a prefork pool, so when `PROMETHEUS_MULTIPROC_DIR` is set each child
writes its samples to files there and the exporter aggregates them
(`prometheus_client.multiprocess`). Gauges declare how children combine.

Two ways to expose a worker's metrics, both reading the same folder:

- in the worker's main process: `connect_worker_signals(port)` from the Celery app
  starts an HTTP server when the worker boots (before the pool forks);
- as a sidecar: `python -m ad_orchestrator.metrics --port 9808` with the same
  `PROMETHEUS_MULTIPROC_DIR` (what the Helm chart and docker-compose run).

The feedback stream's length and lag, and each campaign's spend and remaining
budget, are not counted by any process: `FeedbackStreamCollector` and
`BudgetCollector` read them from Redis at scrape time, in the exporter.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

NAMESPACE = "adorch"

_LATENCY_BUCKETS = (
    0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0,
    2.0, 5.0,
)  # fmt: skip

DECISIONS = Counter(
    "decisions", "Decisions made, by outcome.", ["outcome"], namespace=NAMESPACE
)
DECISION_LATENCY = Histogram(
    "decision_latency_seconds",
    "From request received to decision, by outcome (bid, no_bid, fallback).",
    ["outcome"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
AGENT_LATENCY = Histogram(
    "agent_latency_seconds",
    "Time one agent task spent on its batch.",
    ["agent"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)
AGENT_FALLBACKS = Counter(
    "agent_fallbacks",
    "Agent batches answered by the agent's fallback after its retries.",
    ["agent"],
    namespace=NAMESPACE,
)
NO_BIDS = Counter(
    "no_bids", "No-bid decisions, by reason.", ["reason"], namespace=NAMESPACE
)
POLICY_DENIALS = Counter(
    "policy_denials", "Ads denied by Policy, by rule id.", ["rule"], namespace=NAMESPACE
)
BUDGET_SPENT = Gauge(
    "budget_spent",
    "Money spent plus reserved per campaign, in currency units.",
    ["campaign"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
BUDGET_REMAINING = Gauge(
    "budget_remaining",
    "Budget left per campaign, in currency units.",
    ["campaign"],
    namespace=NAMESPACE,
    multiprocess_mode="mostrecent",
)
WEIGHTS_VERSION = Gauge(
    "weights_version",
    "Version number of the weights each agent is serving.",
    ["agent"],
    namespace=NAMESPACE,
    multiprocess_mode="max",
)
FEEDBACK_EVENTS = Counter(
    "feedback_events",
    "Feedback events recorded, by kind.",
    ["kind"],
    namespace=NAMESPACE,
)
FEEDBACK_DUPLICATES = Counter(
    "feedback_duplicates",
    "Feedback events dropped because their event id was already recorded.",
    namespace=NAMESPACE,
)
DECISION_DEADLINE = Gauge(
    "decision_deadline_seconds",
    "Deadline the process answers within when a request carries no tmax.",
    namespace=NAMESPACE,
    multiprocess_mode="max",
)

WEB_REQUEST_LATENCY = Histogram(
    "web_request_seconds",
    "Time the web example took to answer, by route and HTTP status.",
    ["route", "status"],
    namespace=NAMESPACE,
    buckets=_LATENCY_BUCKETS,
)

# Read from Redis when scraped (see `FeedbackStreamCollector`), never from files.
FEEDBACK_STREAM_LENGTH_NAME = f"{NAMESPACE}_feedback_stream_length"
FEEDBACK_STREAM_LAG_NAME = f"{NAMESPACE}_feedback_stream_lag_entries"
FEEDBACK_STREAM_LAG_SECONDS_NAME = f"{NAMESPACE}_feedback_stream_lag_seconds"
FEEDBACK_STREAM_UP_NAME = f"{NAMESPACE}_feedback_stream_up"
BUDGET_SPENT_NAME = f"{NAMESPACE}_budget_spent"
BUDGET_REMAINING_NAME = f"{NAMESPACE}_budget_remaining"


# What a scrape can contain ------------------------------------------------------------

_DECLARED = (
    DECISIONS,
    DECISION_LATENCY,
    AGENT_LATENCY,
    AGENT_FALLBACKS,
    NO_BIDS,
    POLICY_DENIALS,
    BUDGET_SPENT,
    BUDGET_REMAINING,
    WEIGHTS_VERSION,
    FEEDBACK_EVENTS,
    FEEDBACK_DUPLICATES,
    DECISION_DEADLINE,
    WEB_REQUEST_LATENCY,
)
_SCRAPE_TIME_NAMES = (
    FEEDBACK_STREAM_LENGTH_NAME,
    FEEDBACK_STREAM_LAG_NAME,
    FEEDBACK_STREAM_LAG_SECONDS_NAME,
    FEEDBACK_STREAM_UP_NAME,
)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def metric_labels() -> dict[str, frozenset[str]]:
    """Return every series name a scrape can contain, with its label names.

    Counters appear with `_total` (and `_created`), histograms with `_bucket`
    (which adds `le`), `_count` and `_sum`, so dashboards and alert rules can be
    checked against this table by exact name.
    """
    found: dict[str, frozenset[str]] = {
        FEEDBACK_STREAM_LENGTH_NAME: frozenset(),
        FEEDBACK_STREAM_UP_NAME: frozenset(),
        FEEDBACK_STREAM_LAG_NAME: frozenset({"group"}),
        FEEDBACK_STREAM_LAG_SECONDS_NAME: frozenset({"group"}),
    }
    for metric in _DECLARED:
        (family,) = metric.describe()
        labels = frozenset(metric._labelnames)  # noqa: SLF001 - no public accessor
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            found[family.name + suffix] = labels | extra
    return found


def metric_names() -> frozenset[str]:
    """Return every series name a scrape of this service can contain."""
    return frozenset(metric_labels())


# Feedback stream, read at scrape time ------------------------------------------


def _stream_id_ms(entry_id: Any) -> int | None:
    if entry_id is None:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    head = text.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FeedbackStreamCollector(Collector):
    """Report the feedback stream's length and each consumer group's lag.

    Lag in entries is Redis's own count of entries not yet delivered to the group
    (`XINFO GROUPS`, Redis 7); lag in seconds is how far the group's last delivered
    entry trails the newest entry, from the millisecond times in stream ids. A
    scrape that cannot reach Redis reports `adorch_feedback_stream_up 0` instead of
    failing the whole exposition.

    Args:
        client: A redis-py client (any object with `xinfo_stream`/`xinfo_groups`).
        stream: Key of the feedback stream (`settings.feedback_stream`).
    """

    def __init__(self, client: Any, stream: str) -> None:
        self._client = client
        self._stream = stream

    def describe(self) -> Iterable[Metric]:
        """Describe nothing, so registering does not trigger a Redis round trip."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the stream gauges, read from Redis now."""
        up = GaugeMetricFamily(
            FEEDBACK_STREAM_UP_NAME, "1 if the feedback stream could be read."
        )
        try:
            info, groups = self._read()
        except Exception as error:  # any Redis failure reads as down
            logger.warning(
                "feedback stream %s unreadable at scrape: %s", self._stream, error
            )
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        length = GaugeMetricFamily(
            FEEDBACK_STREAM_LENGTH_NAME, "Entries in the feedback stream."
        )
        length.add_metric([], float(info.get("length", 0)))
        yield length
        lag = GaugeMetricFamily(
            FEEDBACK_STREAM_LAG_NAME,
            "Feedback entries not yet delivered to a consumer group.",
            labels=["group"],
        )
        lag_seconds = GaugeMetricFamily(
            FEEDBACK_STREAM_LAG_SECONDS_NAME,
            "How far a consumer group's last delivered entry trails the newest one.",
            labels=["group"],
        )
        newest_ms = _stream_id_ms(info.get("last-generated-id"))
        for group in groups:
            name = _text(group.get("name", "?"))
            entries = group.get("lag")
            delivered_ms = _stream_id_ms(group.get("last-delivered-id"))
            if entries is None:
                # Redis cannot count after deletions; the gap in time still holds.
                entries = float("nan")
            lag.add_metric([name], float(entries))
            behind = 0.0
            if newest_ms is not None and delivered_ms is not None and entries != 0:
                behind = max(0.0, (newest_ms - delivered_ms) / 1000.0)
            lag_seconds.add_metric([name], behind)
        yield lag
        yield lag_seconds

    def _read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        if not self._client.exists(self._stream):
            return {"length": 0}, []
        info = {_text(k): v for k, v in self._client.xinfo_stream(self._stream).items()}
        groups = [
            {_text(k): v for k, v in group.items()}
            for group in self._client.xinfo_groups(self._stream)
        ]
        return info, groups


class BudgetCollector(Collector):
    """Report every campaign's spend and remaining budget, read from the ledger.

    The ledger in Redis is the one authority on money, shared by every worker;
    reading it at scrape time gives the same numbers whichever process asks.
    This is how `adorch_budget_spent` and `adorch_budget_remaining` are
    exported (by the metrics exporter), so processes need not set those gauges.

    Args:
        ledger: A `BudgetLedger` (anything with `campaigns` and `states(ids)`).
    """

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def describe(self) -> Iterable[Metric]:
        """Describe nothing, so registering does not trigger a Redis round trip."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield spend and remaining budget per campaign, read from Redis now."""
        try:
            states = self._ledger.states(sorted(self._ledger.campaigns))
        except Exception as error:  # any Redis failure: report nothing this time
            logger.warning("budget ledger unreadable at scrape: %s", error)
            return
        spent = GaugeMetricFamily(
            BUDGET_SPENT_NAME,
            "Money spent plus reserved per campaign, in currency units.",
            labels=["campaign"],
        )
        remaining = GaugeMetricFamily(
            BUDGET_REMAINING_NAME,
            "Budget left per campaign, in currency units.",
            labels=["campaign"],
        )
        for campaign, state in states.items():
            spent.add_metric([campaign], state.spent + state.reserved)
            remaining.add_metric([campaign], state.remaining)
        yield spent
        yield remaining


# Exposition -------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """Return the folder prometheus_client writes to in multiprocess mode, if set.

    prometheus_client itself decides the mode from this environment variable, so
    reading it here only mirrors what the library already does.
    """
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def exposition_registry(
    extra: Sequence[Collector] = (),
) -> CollectorRegistry:
    """Return the registry a scrape should read in this process.

    In multiprocess mode that is a fresh registry aggregating every process's
    files; otherwise the process-wide default registry. `extra` collectors (for
    example a `FeedbackStreamCollector`) are added to the returned registry.
    """
    folder = multiprocess_dir()
    if folder is None:
        registry = REGISTRY
    else:
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry, path=str(folder))
    for collector in extra:
        registry.register(collector)
    return registry


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """Return one scrape's body and its content type."""
    return generate_latest(registry or exposition_registry()), CONTENT_TYPE_LATEST


def prepare_multiprocess_dir(folder: Path) -> None:
    """Create the multiprocess folder and remove a previous run's sample files.

    prometheus_client requires the folder to be emptied between runs, or counters
    of processes that no longer exist would be added to the new ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def start_metrics_server(
    port: int,
    addr: str = "127.0.0.1",
    *,
    deadline_s: float | None = None,
    extra: Sequence[Collector] = (),
) -> Any:
    """Serve this process's (or, in multiprocess mode, all processes') metrics.

    Args:
        port: TCP port to listen on; 0 picks a free one (read `server.server_port`).
        addr: Address to bind; keep loopback unless a scraper is elsewhere.
        deadline_s: When given, published as `adorch_decision_deadline_seconds`,
            which the latency alert compares against.
        extra: Collectors added to the exposition, such as the feedback stream's.

    Returns:
        The running WSGI server (its thread is a daemon); call `shutdown()` to stop.
    """
    if deadline_s is not None:
        DECISION_DEADLINE.set(deadline_s)
    registry = exposition_registry(extra)
    server, _thread = start_http_server(port, addr, registry=registry)
    logger.info(
        "metrics served on http://%s:%d/metrics (multiprocess dir: %s)",
        addr,
        server.server_port,
        multiprocess_dir(),
    )
    return server


def connect_worker_signals(port: int | None, addr: str = "127.0.0.1") -> None:
    """Wire a Celery worker's lifecycle to the multiprocess exposition.

    Call once where the Celery app is built. When the worker boots (main process,
    before the pool forks) the multiprocess folder is emptied and, if `port` is
    given, a metrics server starts; when a pool child exits its live gauges are
    dropped, as prometheus_client requires.
    """
    from celery.signals import worker_init, worker_process_shutdown

    def _on_worker_init(**_: Any) -> None:
        folder = multiprocess_dir()
        if folder is not None:
            prepare_multiprocess_dir(folder)
        if port is not None:
            start_metrics_server(port, addr)

    def _on_child_exit(pid: int | None = None, **_: Any) -> None:
        folder = multiprocess_dir()
        if folder is not None:
            _multiprocess.mark_process_dead(pid or os.getpid(), str(folder))

    worker_init.connect(_on_worker_init, weak=False)
    worker_process_shutdown.connect(_on_child_exit, weak=False)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the metrics exporter next to a worker (a sidecar), until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m ad_orchestrator.metrics",
        description="Serve the multiprocess metrics of the worker sharing "
        "PROMETHEUS_MULTIPROC_DIR, plus the feedback stream's lag.",
    )
    parser.add_argument("--port", type=int, default=9808)
    parser.add_argument("--addr", default="127.0.0.1")
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="Do not read the feedback stream and budgets from Redis at scrape time.",
    )
    args = parser.parse_args(argv)

    from ad_orchestrator.logging import configure_logging
    from ad_orchestrator.settings import load_settings

    settings = load_settings()
    configure_logging(settings, "metrics")
    if multiprocess_dir() is None:
        parser.error(
            "PROMETHEUS_MULTIPROC_DIR is not set: point it at the worker's "
            "multiprocess folder, or the exporter has nothing to aggregate"
        )
    extra: list[Collector] = []
    if not args.no_stream:
        import redis

        from ad_orchestrator.ledger import BudgetLedger, load_campaigns
        from ad_orchestrator.redis_server import resolve_redis_url

        client = redis.Redis.from_url(resolve_redis_url(settings), socket_timeout=1.0)
        extra.append(FeedbackStreamCollector(client, settings.feedback_stream))
        campaigns = load_campaigns(settings.campaigns_path)
        extra.append(BudgetCollector(BudgetLedger(client, settings, campaigns)))
    server = start_metrics_server(
        args.port, args.addr, deadline_s=settings.deadline_ms / 1000.0, extra=extra
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
