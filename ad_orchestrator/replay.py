"""The main job: replay the Open Bandit Dataset through the running service.

Each logged impression becomes one `AdRequest` whose candidates are all the items of
the campaign. Batches go through `gather_results` on real Celery workers (one is
started when none answers). Where the service chose the item the logging policy
showed, the logged outcome is fed back (`record_feedback`: an impression, and a click
if there was one). The summary counts decisions, no-bids and fallbacks, measures
throughput and latency, and estimates the service's CTR off-policy.

The estimate: the service's choice is random (epsilon-greedy), so
`1[chosen == logged] / pscore` is an unbiased importance weight of the logged row
under the service's policy (the expectation of the indicator is the policy's
probability of the logged item). IPW averages `weight * click`; SNIPW divides by
the mean weight. Intervals are 95% percentile bootstraps over rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ad_orchestrator.schemas import Decision
from ad_orchestrator.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

DEFAULT_OUT = REPO_ROOT / "artifacts" / "replay-summary.json"
N_BOOTSTRAP = 1000


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay and how."""

    campaign: str = "all"
    policy: str = "random"
    rows: int = 10_000
    start_row: int = 0
    batch_size: int = 64
    in_flight: int = 4
    timeout_s: float = 120.0
    out: Path = DEFAULT_OUT
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows <= 0:
            raise ValueError(f"`rows` must be positive, but got {self.rows}")
        if self.start_row < 0:
            raise ValueError(f"`start_row` must be >= 0, but got {self.start_row}")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError(f"`batch_size` must be 1..1024, but got {self.batch_size}")
        if self.in_flight <= 0:
            raise ValueError(f"`in_flight` must be positive, but got {self.in_flight}")


def bootstrap_interval(
    values: np.ndarray,
    statistic: Any,
    rng: np.random.Generator,
    n_bootstrap: int = N_BOOTSTRAP,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Return the percentile bootstrap interval of `statistic` over rows."""
    n = values.shape[0]
    draws = [statistic(values[rng.integers(0, n, n)]) for _ in range(n_bootstrap)]
    low, high = np.nanpercentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def off_policy_estimates(
    matched: np.ndarray, clicks: np.ndarray, pscore: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """Estimate the service's CTR from logged rows (IPW and SNIPW, 95% intervals).

    Args:
        matched: `(n,)` 1 where the service chose the logged item, else 0.
        clicks: `(n,)` the logged clicks.
        pscore: `(n,)` the logging policy's propensity of the logged item.
    """
    weights = matched / pscore
    table = np.stack([weights, clicks], axis=1)

    def ipw(rows: np.ndarray) -> float:
        return float(np.mean(rows[:, 0] * rows[:, 1]))

    def snipw(rows: np.ndarray) -> float:
        total = rows[:, 0].sum()
        return float((rows[:, 0] * rows[:, 1]).sum() / total) if total else float("nan")

    def mean_click(rows: np.ndarray) -> float:
        return float(rows[:, 1].mean())

    rng = np.random.default_rng(seed)
    return {
        name: {"estimate": fn(table), "ci95": bootstrap_interval(table, fn, rng)}
        for name, fn in (("ipw", ipw), ("snipw", snipw), ("logging_ctr", mean_click))
    }


def logged_outcome(decision: Decision, clicked: bool) -> list[dict[str, Any]]:
    """Return the feedback events of a logged impression the service also chose."""
    events: list[dict[str, Any]] = [
        {
            "event_id": f"{decision.decision_id}-imp",
            "decision_id": decision.decision_id,
            "kind": "impression",
            "value": decision.bid_cpm or 0.0,
        }
    ]
    if clicked:
        events.append(
            {
                "event_id": f"{decision.decision_id}-click",
                "decision_id": decision.decision_id,
                "kind": "click",
            }
        )
    return events


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    p50, p99 = np.percentile(np.asarray(values) * 1000, [50, 99])
    return {"p50": round(float(p50), 2), "p99": round(float(p99), 2)}


def run_replay(settings: Settings, options: ReplayOptions) -> dict[str, Any]:
    """Replay OBD rows through the service and return the summary (also written)."""
    from ad_orchestrator.app import app, gather_results, record_feedback, runtime
    from ad_orchestrator.workers import start_worker, workers_answering
    from rl.envs.obd import load_obd

    bandit = load_obd(options.policy, options.campaign)
    if options.start_row >= bandit.n_rounds:
        raise ValueError(
            f"`start_row` must be below the log's {bandit.n_rounds} rows, "
            f"but got {options.start_row}"
        )
    rows = range(options.start_row, min(options.start_row + options.rows,
                                        bandit.n_rounds))  # fmt: skip
    campaign_id = f"obd-{options.campaign}"
    runtime().reset_campaigns([campaign_id])

    started_worker = None
    if not workers_answering(app, settings.queue):
        log.info("no worker answers; starting one")
        started_worker = start_worker(
            app,
            "replay",
            queue=settings.queue,
            logdir=settings.state_dir / "logs",
            concurrency=settings.worker_concurrency,
            # OBD items carry features, no text: loading the sentence model in
            # the background would only take CPU from the replay (about 25%).
            extra_env={"ADORCH_CREATIVE_PRELOAD": "false"},
        )
    try:
        summary = _replay(options, bandit, rows, campaign_id, gather_results,
                          record_feedback)  # fmt: skip
    finally:
        if started_worker is not None:
            started_worker.stop()
    summary["redis"] = (
        "embedded" if "redis.sock" in app.adorch_redis_url else "external"
    )
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(options.out)
    return summary


def _replay(
    options: ReplayOptions,
    bandit: Any,
    rows: range,
    campaign_id: str,
    gather_results: Any,
    record_feedback: Any,
) -> dict[str, Any]:
    from rl.envs.obd import row_to_request

    decisions: dict[int, Decision] = {}
    batch_latency: list[float] = []
    pending: deque[tuple[list[int], float, Any]] = deque()
    feedback: list[Any] = []
    lost = 0
    began = time.perf_counter()

    def collect(oldest: tuple[list[int], float, Any]) -> None:
        nonlocal lost
        indices, sent_at, result = oldest
        try:
            answer = result.get(timeout=options.timeout_s)
        except Exception as error:  # noqa: BLE001 - counted and reported as lost
            log.error("batch starting at row %d failed: %s", indices[0], error)
            lost += len(indices)
            return
        batch_latency.append(time.perf_counter() - sent_at)
        for i, decision in zip(indices, answer, strict=True):
            decisions[i] = decision
            logged_item = str(int(bandit.item_ids[bandit.actions[i]]))
            if decision.outcome == "bid" and decision.ad_id == logged_item:
                feedback.extend(
                    record_feedback.delay(event)
                    for event in logged_outcome(decision, bool(bandit.rewards[i]))
                )

    with tqdm(total=len(rows), unit="req", desc="replaying OBD") as progress:
        for start in range(rows.start, rows.stop, options.batch_size):
            indices = list(range(start, min(start + options.batch_size, rows.stop)))
            batch = [row_to_request(bandit, i, campaign_id) for i in indices]
            pending.append((indices, time.perf_counter(), gather_results.delay(batch)))
            while len(pending) >= options.in_flight:
                collect(pending.popleft())
                progress.update(len(decisions) + lost - progress.n)
        while pending:
            collect(pending.popleft())
            progress.update(len(decisions) + lost - progress.n)
    elapsed = time.perf_counter() - began
    duplicates = sum(
        1 for f in feedback if f.get(timeout=options.timeout_s)["duplicate"]
    )

    ordered = sorted(decisions)
    outcomes = Counter(decisions[i].outcome for i in ordered)
    reasons = Counter(
        decisions[i].no_bid_reason for i in ordered if decisions[i].no_bid_reason
    )
    fallbacks: Counter[str] = Counter()
    for i in ordered:
        fallbacks.update(decisions[i].agent_fallbacks)
    idx = np.asarray(ordered, dtype=np.int64)
    chosen = np.array([decisions[i].ad_id or "" for i in ordered])
    logged = np.array([str(int(bandit.item_ids[a])) for a in bandit.actions[idx]])
    matched = (chosen == logged).astype(np.float64)
    estimates = off_policy_estimates(
        matched,
        bandit.rewards[idx].astype(np.float64),
        bandit.pscore[idx],
        options.seed,
    )
    versions = Counter(
        " ".join(
            f"{agent}={version or 'untrained'}"
            for agent, version in sorted(decisions[i].weights_versions.items())
            if agent in ("content", "budget")
        )
        for i in ordered
    )
    return {
        "dataset": f"obd/{options.policy}/{options.campaign}",
        "requests": len(rows),
        "rows": [rows.start, rows.stop],
        "decisions": len(decisions),
        "lost": len(rows) - len(decisions),
        "bids": outcomes.get("bid", 0),
        "no_bids": dict(reasons),
        "fallbacks_by_agent": dict(fallbacks),
        "batch_size": options.batch_size,
        "seconds": round(elapsed, 2),
        "decisions_per_s": round(len(decisions) / elapsed, 1),
        "batch_latency_ms": _percentiles(batch_latency),
        "matched_logged_action": int(matched.sum()),
        "feedback_events": len(feedback),
        "feedback_duplicates": duplicates,
        "off_policy": estimates,
        "weights_versions": {k: v for k, v in versions.items()},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """Render the summary as the text `make run` prints."""
    ope = summary["off_policy"]

    def line(name: str) -> str:
        low, high = ope[name]["ci95"]
        return f"{ope[name]['estimate']:.4f}  (95% CI {low:.4f} .. {high:.4f})"

    lat = summary["batch_latency_ms"]
    lines = [
        f"dataset              {summary['dataset']} rows {summary['rows'][0]}.."
        f"{summary['rows'][1] - 1}  (redis: {summary['redis']})",
        f"requests             {summary['requests']}",
        f"decisions            {summary['decisions']}  (lost {summary['lost']})",
        f"bids                 {summary['bids']}",
        f"no-bids by reason    {summary['no_bids'] or '{}'}",
        f"fallbacks by agent   {summary['fallbacks_by_agent'] or '{}'}",
        f"throughput           {summary['decisions_per_s']} decisions/s "
        f"(batches of {summary['batch_size']}, {summary['seconds']} s)",
        f"batch latency        p50 {lat['p50']} ms, p99 {lat['p99']} ms",
        f"matched logged item  {summary['matched_logged_action']} rows "
        f"({summary['feedback_events']} feedback events recorded)",
        f"service CTR, IPW     {line('ipw')}",
        f"service CTR, SNIPW   {line('snipw')}",
        f"logging policy CTR   {line('logging_ctr')}",
        f"weights versions     {summary['weights_versions']}",
        f"creative cache       {_cache_line(summary.get('creative_cache', {}))}",
        f"summary written to   {summary.get('summary_path', '-')}",
    ]
    return "\n".join(lines)


def _cache_line(stats: dict[str, Any]) -> str:
    if not stats.get("hits") and not stats.get("misses"):
        return "no text creatives analysed (OBD items are feature-only)"
    return (
        f"hit rate {stats.get('hit_rate', 0):.3f} ({stats.get('hits')} hits, "
        f"{stats.get('misses')} misses, {stats.get('analysed')} model analyses)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the replay's options to a command-line parser."""
    parser.add_argument(
        "--campaign",
        choices=("all", "men", "women"),
        default="all",
        help="OBD campaign (its items are the candidates)",
    )
    parser.add_argument(
        "--policy",
        choices=("random", "bts"),
        default="random",
        help="which logging policy's log to replay",
    )
    parser.add_argument("--rows", type=int, default=10_000, help="rows to replay")
    parser.add_argument(
        "--start-row",
        type=int,
        default=0,
        help="first row (e.g. 7000: only rows `make train` held out)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="requests per task")
    parser.add_argument(
        "--in-flight", type=int, default=4, help="batches sent before waiting"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="summary JSON path"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def options_from(args: argparse.Namespace) -> ReplayOptions:
    """Build replay options from parsed command-line arguments."""
    return ReplayOptions(
        campaign=args.campaign,
        policy=args.policy,
        rows=args.rows,
        start_row=args.start_row,
        batch_size=args.batch_size,
        in_flight=args.in_flight,
        out=args.out,
        seed=args.seed,
    )
