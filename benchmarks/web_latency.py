"""Web example latency: 1,000 sequential /decide requests, worker up, then down.

Starts a real worker and the web example (uvicorn on 127.0.0.1), both on a queue
of their own, and posts `AdRequest`s without `tmax`, so the configured deadline
(`ADORCH_DEADLINE_MS`, or `--deadline-ms`) applies. Each request's time is measured
by the caller, from sending to the whole answer read. Then the worker is stopped
and the same number of requests is sent again: every answer must be the fallback,
and inside the deadline.

    make bench-web                      # 1,000 + 1,000 requests
    make bench-web ARGS="--requests 200 --deadline-ms 250"

Prints a table and writes `artifacts/web_latency.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ad_orchestrator.settings import REPO_ROOT, load_settings
from ad_orchestrator.workers import start_worker
from examples.web.launch import start_web
from examples.web.samples import sample_ad_request

WARMUP = 20


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0..100) of `values`, nearest-rank."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def run_phase(http: httpx.Client, count: int, deadline_s: float) -> dict[str, Any]:
    """Send `count` sequential requests and summarise their times and outcomes."""
    times_ms: list[float] = []
    fallbacks = errors = 0
    for _ in range(count):
        body = sample_ad_request()
        started = time.perf_counter()
        response = http.post("/decide", json=body)
        elapsed = time.perf_counter() - started
        times_ms.append(elapsed * 1000)
        if response.status_code != 200:
            errors += 1
            continue
        fallbacks += bool(response.json().get("fallback"))
    deadline_ms = deadline_s * 1000
    return {
        "requests": count,
        "errors": errors,
        "fallbacks": fallbacks,
        "within_deadline": sum(t <= deadline_ms for t in times_ms),
        "p50_ms": round(statistics.median(times_ms), 2),
        "p90_ms": round(percentile(times_ms, 90), 2),
        "p99_ms": round(percentile(times_ms, 99), 2),
        "max_ms": round(max(times_ms), 2),
        "p99_over_deadline": round(percentile(times_ms, 99) / deadline_ms, 3),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both phases and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web_latency")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--deadline-ms",
        type=int,
        default=None,
        help="Deadline the web example applies (default: settings' deadline_ms).",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "artifacts")
    args = parser.parse_args(argv)

    settings = load_settings()
    deadline_ms = args.deadline_ms or settings.deadline_ms
    queue = f"{settings.queue}-bench-web-{os.getpid()}"
    env = {
        "ADORCH_QUEUE": queue,
        "ADORCH_DEADLINE_MS": str(deadline_ms),
        "ADORCH_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    from ad_orchestrator.app import app

    logs = Path(tempfile.mkdtemp(prefix="adorch-bench-web-"))
    worker = start_worker(app, "bench-web", queue=queue, logdir=logs, extra_env=env)
    web = None
    try:
        web = start_web(logs / "web.log", extra_env=env)
        with httpx.Client(base_url=web.url, timeout=deadline_ms / 1000 + 5) as http:
            for _ in range(WARMUP):
                http.post("/decide", json=sample_ad_request(tmax_ms=20_000), timeout=30)
            up = run_phase(http, args.requests, deadline_ms / 1000)
            worker.stop()
            down = run_phase(http, args.requests, deadline_ms / 1000)
    finally:
        if web is not None:
            web.stop()
        worker.stop()

    report = {
        "deadline_ms": deadline_ms,
        "warmup_requests": WARMUP,
        "worker_up": up,
        "worker_stopped": down,
    }
    print(
        f"web example: {args.requests} sequential requests, deadline {deadline_ms} ms"
    )

    print(f"{'phase':<16}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"
          f"{'p99/dl':>8}{'fallback':>10}{'in time':>9}{'errors':>8}")  # fmt: skip
    for name, row in (("worker up", up), ("worker stopped", down)):
        print(
            f"{name:<16}{row['p50_ms']:>9.1f}{row['p90_ms']:>9.1f}"
            f"{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}{row['p99_over_deadline']:>8.2f}"
            f"{row['fallbacks']:>10}{row['within_deadline']:>9}{row['errors']:>8}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
