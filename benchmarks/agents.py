"""Time the Context and Content agents' `decide` on OBD-shaped batches.

Builds 256 requests from the Open Bandit Dataset sample shipped in `data/obd`
(80 candidate items each, with their item features and the user's affinities), runs
each agent's `decide` a few times on fakeredis, and prints the median and best time
per batch. A second part shows creative understanding and its cache: the Content
agent decides a batch whose candidates are a few text creatives twice (cold, then
cached) and prints the cache's hit rate and how many creatives the model read.

Run: `.venv/bin/python benchmarks/agents.py [--batch 256] [--repeats 7]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import torch

from ad_orchestrator.creatives import read_cache_stats
from ad_orchestrator.devices import country_zone, normalise_country, parse_user_agent
from ad_orchestrator.schemas import AdRequest
from ad_orchestrator.settings import load_settings
from rl.envs.obd import load_obd, row_to_request
from tasks.base import Agent, Upstream


def obd_requests(n: int) -> list[AdRequest]:
    """Return the first `n` OBD random/all rows as the replay builds them."""
    log = load_obd("random", "all")
    return [
        AdRequest.model_validate(row_to_request(log, i, "obd-all")) for i in range(n)
    ]


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Return the median wall, best wall and median CPU time of `fn()`, in ms.

    CPU time (this process, all threads) shows the work itself when other
    processes share the machine and stretch the wall time.
    """
    fn()  # warm caches and lazy loads
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def main() -> None:
    """Print decide timings per agent and the creative cache demonstration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--skip-creatives", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from tasks.content import ContentAgent
    from tasks.context import ContextAgent

    settings = load_settings()
    client = fakeredis.FakeRedis()
    requests = obd_requests(args.batch)
    upstream = Upstream()
    n_ads = len(requests[0].candidates)
    print(
        f"batch: {len(requests)} OBD requests x {n_ads} candidate ads; torch threads "
        f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )
    agents: list[Agent[Any]] = [
        ContextAgent(settings, client),
        ContentAgent(settings, client),
    ]
    for agent in agents:
        wall, best, cpu = timed(
            lambda a=agent: a.decide(requests, upstream),  # type: ignore[misc]
            args.repeats,
        )
        print(
            f"{agent.name:8s} decide: wall median {wall:7.1f} ms, best {best:7.1f} "
            f"ms; CPU median {cpu:7.1f} ms"
        )

    device_batch = device_requests(args.batch)
    context = ContextAgent(settings, client)
    for cache in (parse_user_agent, normalise_country, country_zone):
        cache.cache_clear()
    started = time.process_time()
    context.decide(device_batch, upstream)
    cold = (time.process_time() - started) * 1000
    wall, best, cpu = timed(
        lambda: context.decide(device_batch, upstream), args.repeats
    )
    print(
        f"context decide, {len(device_batch)} requests with {len(USER_AGENTS)} user "
        f"agents, countries and offsets: first (parses) CPU {cold:.1f} ms; then wall "
        f"median {wall:.1f} ms, CPU median {cpu:.1f} ms"
    )

    if args.skip_creatives:
        return
    text_batch = text_requests(args.batch)
    content = ContentAgent(settings, client)
    for round_ in ("cold: model load + analysis", "warm: every creative cached"):
        started = time.perf_counter()
        outputs = content.decide(text_batch, upstream)
        elapsed = (time.perf_counter() - started) * 1000
        stats = read_cache_stats(client, settings)
        print(
            f"content decide, {len(text_batch)} requests x {len(CREATIVES)} text "
            f"creatives ({round_}): {elapsed:.0f} ms; cache hits {stats['hits']}, "
            f"misses {stats['misses']}, read by the model {stats['analysed']}, "
            f"hit rate {stats['hit_rate']:.3f}"
        )
    first = outputs[0]
    for ad_id, topics in first.topics.items():
        top = ", ".join(f"{t.category} {t.score:.2f}" for t in topics[:3])
        print(
            f"  {ad_id:8s} topics {top}; sentiment {first.sentiment[ad_id]:+.2f}; "
            f"brand safety {first.brand_safety[ad_id] or '-'}"
        )


USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/120.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/120.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/17.0 Safari/605.1.15",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like "
    "Gecko) SamsungBrowser/2.2 Chrome/63.0.3239.84 TV Safari/537.36",
    "curl/8.4.0",
]
COUNTRIES = ["us", "GBR", "de", "JPN", "br", "IND", None, "xx"]


def device_requests(n: int) -> list[AdRequest]:
    """Return `n` requests with real user agents, countries and UTC offsets."""
    return [
        AdRequest.model_validate(
            {
                "request_id": f"device-{i}",
                "timestamp": "2024-07-04T16:45:00Z",
                "device": {"ua": USER_AGENTS[i % len(USER_AGENTS)]},
                "geo": {
                    "country": COUNTRIES[i % len(COUNTRIES)],
                    "utcoffset": 60 if i % 5 == 0 else None,
                },
                "user": {"yob": 1950 + i % 50},
                "slots": [{"slot_id": "s", "position": 1}],
                "candidates": [{"ad_id": "a", "campaign_id": "c"}],
            }
        )
        for i in range(n)
    ]


CREATIVES = [
    ("beer", "Ice-cold craft beer", "Our hoppy lager, brewed for summer barbecues."),
    ("sedan", "The all-new hybrid sedan", "50 mpg. Book a test drive at a dealer."),
    ("hotel", "Beachfront hotel in Bali", "Book your holiday now and save 30%."),
    ("python", "Learn Python online", "Interactive coding bootcamp for beginners."),
    ("casino", "100 free spins tonight", "Join our online casino and spin the reels."),
    ("rifles", "Hunting season sale", "Rifles, scopes and ammunition, 20% off."),
]


def text_requests(n: int) -> list[AdRequest]:
    """Return `n` requests whose candidates are the same few text creatives."""
    candidates = [
        {
            "ad_id": ad_id,
            "campaign_id": "demo",
            "creative": {"title": title, "body": body},
        }
        for ad_id, title, body in CREATIVES
    ]
    return [
        AdRequest.model_validate(
            {
                "request_id": f"text-{i}",
                "timestamp": "2024-07-04T16:45:00Z",
                "slots": [{"slot_id": "s", "position": 1}],
                "candidates": candidates,
            }
        )
        for i in range(n)
    ]


if __name__ == "__main__":
    main()
