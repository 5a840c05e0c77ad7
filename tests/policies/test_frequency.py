"""Tests of frequency-cap counters (`policies.frequency`) on the real Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from ad_orchestrator.settings import Settings
from policies.frequency import cap_key, caps_reached, record_impression
from policies.schema import FrequencyCap

pytestmark = pytest.mark.integration

CAPS = [
    FrequencyCap(id="burst", max_impressions=3, window_s=60),
    FrequencyCap(
        id="autos", campaigns=["auto-launch"], max_impressions=100, window_s=600
    ),
]


def test_concurrent_impressions_are_all_counted_with_a_window(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """200 impressions recorded from 16 threads count 200, and the key expires."""
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda _: record_impression(
                    redis_client, settings, "h1", "auto-launch", CAPS
                ),
                range(200),
            )
        )

    for cap in CAPS:
        key = cap_key(settings, cap.id, "h1", "auto-launch")
        assert int(redis_client.get(key) or 0) == 200
        assert 0 < redis_client.ttl(key) <= cap.window_s


def test_caps_apply_only_to_their_campaigns(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """A cap listing campaigns neither counts nor denies other campaigns."""
    counts = record_impression(redis_client, settings, "h2", "travel-deals", CAPS)
    assert counts == {"burst": 1}


def test_reached_caps_are_read_in_one_batch(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """caps_reached names, per request, the campaigns whose cap the user reached."""
    for _ in range(3):
        record_impression(redis_client, settings, "h3", "travel-deals", CAPS)
    reached = caps_reached(
        redis_client,
        settings,
        CAPS,
        ["h3", "h4", None],
        [["travel-deals", "auto-launch"], ["travel-deals"], ["travel-deals"]],
    )
    assert reached == [{"travel-deals": ["burst"]}, {}, {}]


def test_counters_start_again_after_the_window(
    redis_client: redis.Redis, settings: Settings
) -> None:
    """When the window's key expires, the user is no longer capped."""
    short = [FrequencyCap(id="tiny", max_impressions=1, window_s=1)]
    record_impression(redis_client, settings, "h5", "kids-books", short)
    assert caps_reached(redis_client, settings, short, ["h5"], [["kids-books"]]) == [
        {"kids-books": ["tiny"]}
    ]
    redis_client.delete(cap_key(settings, "tiny", "h5", "kids-books"))  # = expiry
    assert caps_reached(redis_client, settings, short, ["h5"], [["kids-books"]]) == [{}]
