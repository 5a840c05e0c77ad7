"""Time the Context and Content agents' `decide` on OBD-shaped batches.

Builds 256 requests from the Open Bandit Dataset sample shipped in `data/obd`
(80 candidate items each, with their item features and the user's affinities), runs
each agent's `decide` a few times on fakeredis, and prints the median and best time
per batch. A second part shows the creative-analysis cache: a batch of text
creatives analysed twice prints its hit rate and how many creatives the model read.

Run: `.venv/bin/python benchmarks/agents.py [--batch 256] [--repeats 7]`.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import statistics
import time
from datetime import datetime
from pathlib import Path

import fakeredis

from ad_orchestrator.schemas import AdRequest, Creative
from ad_orchestrator.settings import DATA_DIR, load_settings
from tasks.base import Upstream


def obd_requests(
    n: int, folder: Path = DATA_DIR / "obd" / "random" / "all"
) -> list[AdRequest]:
    """Return `n` requests built from the first OBD rows (80 items each)."""
    import csv

    with (folder / "item_context.csv").open() as handle:
        items = list(csv.DictReader(handle))
    candidates = []
    for item in items:
        features: dict[str, str | float] = {}
        for name, value in item.items():
            if name.startswith("item_feature_"):
                try:
                    features[name] = float(value)
                except ValueError:
                    features[name] = value
        candidates.append(
            {"ad_id": item["item_id"], "campaign_id": "obd-all", "features": features}
        )
    with gzip.open(folder / "all.csv.gz", "rt") as handle:
        rows = list(itertools.islice(csv.DictReader(handle), n))
    requests = []
    for i, row in enumerate(rows):
        user = {k: v for k, v in row.items() if k.startswith("user_feature_")}
        affinity = {
            k.rsplit("_", 1)[1]: float(v)
            for k, v in row.items()
            if k.startswith("user-item_affinity_") and float(v)
        }
        requests.append(
            AdRequest(
                request_id=f"obd-{i}",
                timestamp=datetime.fromisoformat(row["timestamp"]),
                user={"features": user, "item_affinity": affinity},
                slots=[{"slot_id": "s", "position": int(row["position"])}],
                candidates=candidates,
            )
        )
    return requests


def timed(fn, repeats: int) -> tuple[float, float]:
    """Return the median and best wall time of `fn()` in milliseconds."""
    fn()  # warm caches and lazy loads
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return statistics.median(runs), min(runs)


def main() -> None:
    """Print decide timings per agent and the creative cache demonstration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-creatives", action="store_true")
    args = parser.parse_args()

    from tasks.content import ContentAgent
    from tasks.context import ContextAgent

    settings = load_settings()
    client = fakeredis.FakeRedis()
    requests = obd_requests(args.batch)
    upstream = Upstream()
    n_ads = len(requests[0].candidates)
    print(f"batch: {len(requests)} OBD requests x {n_ads} candidate ads")
    for agent in (ContextAgent(settings, client), ContentAgent(settings, client)):
        median, best = timed(lambda a=agent: a.decide(requests, upstream), args.repeats)
        print(f"{agent.name:8s} decide: median {median:7.1f} ms  best {best:7.1f} ms")

    if args.skip_creatives:
        return
    from ad_orchestrator.creatives import CreativeAnalyzer

    analyzer = CreativeAnalyzer(settings, client)
    creatives = [
        Creative(title=title, body=body)
        for title, body in [
            ("Ice-cold craft beer", "Our hoppy lager, brewed for summer barbecues."),
            ("The all-new hybrid sedan", "50 mpg. Book a test drive at a dealer."),
            ("Beachfront hotel in Bali", "Book your holiday now and save 30%."),
            ("Learn Python online", "Interactive coding bootcamp for beginners."),
        ]
    ] * 64  # 256 creatives, 4 unique
    for round_ in (1, 2):
        started = time.perf_counter()
        analyzer.analyse(creatives)
        elapsed = (time.perf_counter() - started) * 1000
        stats = analyzer.cache_stats()
        print(
            f"creatives round {round_}: {len(creatives)} analysed in {elapsed:.0f} ms; "
            f"hits {stats['hits']}, misses {stats['misses']}, "
            f"read by the model {stats['analysed']}, hit rate {stats['hit_rate']:.3f}"
        )


if __name__ == "__main__":
    main()
