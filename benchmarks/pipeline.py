"""How fast is a decision, and how much of it is Celery? (`make bench`)

In one run, against one real worker on the configured Redis:

1. single-request decision latency (p50/p99) through `gather_results`;
2. the same canvas shape with no-op tasks (`adorch.probe.gather`): Celery's floor;
3. decisions per second at batch sizes 1, 32 and 256 (OBD requests, a few batches
   in flight).

Absolute times on a shared 2-core machine are noisy; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ad_orchestrator.settings import REPO_ROOT, load_settings


def _latencies(call: Callable[[], Any], n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        began = time.perf_counter()
        call()
        out[i] = time.perf_counter() - began
    return out * 1000


def _throughput(
    send: Callable[[list[dict[str, Any]]], Any],
    requests: Sequence[dict[str, Any]],
    batch_size: int,
    in_flight: int,
) -> float:
    pending: deque[Any] = deque()
    done = 0
    began = time.perf_counter()
    for start in range(0, len(requests), batch_size):
        pending.append(send(list(requests[start : start + batch_size])))
        while len(pending) >= in_flight:
            done += len(pending.popleft().get(timeout=300))
    while pending:
        done += len(pending.popleft().get(timeout=300))
    return done / (time.perf_counter() - began)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pipeline")
    parser.add_argument("--single", type=int, default=200, help="latency samples")
    parser.add_argument("--requests", type=int, default=2048, help="per batch size")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "artifacts" / "bench-pipeline.json"
    )
    args = parser.parse_args(argv)

    settings = load_settings()
    from ad_orchestrator.app import app, gather_results, probe_gather
    from ad_orchestrator.workers import start_worker
    from rl.envs.obd import load_obd, row_to_request

    bandit = load_obd("random", "all")
    requests = [row_to_request(bandit, i, "obd-all") for i in range(args.requests)]
    worker = start_worker(
        app,
        "bench",
        queue=settings.queue,
        logdir=settings.state_dir / "logs",
        concurrency=settings.worker_concurrency,
    )
    try:
        for request in requests[:20]:  # warm the pool: models, connections
            gather_results.delay(request).get(timeout=30)
            probe_gather.delay(1).get(timeout=30)
        real = _latencies(
            lambda: gather_results.delay(requests[0]).get(timeout=30), args.single
        )
        floor = _latencies(lambda: probe_gather.delay(1).get(timeout=30), args.single)
        rates = {
            size: _throughput(gather_results.delay, requests, size, args.in_flight)
            for size in (1, 32, 256)
        }
    finally:
        worker.stop()

    def pct(values: np.ndarray) -> dict[str, float]:
        p50, p99 = np.percentile(values, [50, 99])
        return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}

    report = {
        "worker_concurrency": settings.worker_concurrency,
        "single_request": pct(real),
        "celery_floor_same_canvas": pct(floor),
        "decisions_per_s": {str(k): round(v, 1) for k, v in rates.items()},
    }
    ratio = (
        report["single_request"]["p50_ms"]
        / report["celery_floor_same_canvas"]["p50_ms"]
    )
    print(f"{'':34}{'p50 ms':>10}{'p99 ms':>10}")
    rows = (
        ("gather_results, one request", "single_request"),
        ("no-op canvas, same shape", "celery_floor_same_canvas"),
    )
    for name, key in rows:
        row = report[key]
        print(f"{name:34}{row['p50_ms']:>10}{row['p99_ms']:>10}")
    print(f"decision p50 / Celery floor p50: {ratio:.2f}x")
    for size, rate in report["decisions_per_s"].items():
        print(f"batch size {size:>4}: {rate:>8} decisions/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
