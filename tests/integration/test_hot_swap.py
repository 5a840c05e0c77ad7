"""Weights hot-swap in a real prefork worker: promote, roll back, refuse a bad blob.

One worker runs on its own queue and key prefix, so nothing else in the session
touches its weights. Every step changes only Redis (the store's pointer), never the
worker: the same worker process answers from the first decision to the last.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import torch

from ad_orchestrator.schemas import Decision
from ad_orchestrator.settings import Settings, load_settings
from ad_orchestrator.weights import WeightStore
from rl.networks import ContentQNet
from tests.conftest import start_worker

pytestmark = pytest.mark.integration

HMAC_KEY = "hot-swap-test-key-" + "0" * 14
# ContentAgent's ServingModel reads the pointer at most every 0.5 s; any task that
# starts later than this after a change sees the change.
AFTER_CHECK_S = 0.8
N_DECISIONS = 12


def make_request(rid: str) -> dict[str, Any]:
    """A request with five candidates of the OBD campaign."""
    return {
        "request_id": rid,
        "timestamp": "2019-11-25T10:00:00Z",
        "user": {"id": "user-7", "features": {"user_feature_0": "abc"}},
        "slots": [{"slot_id": "s1", "position": 1}],
        "candidates": [
            {"ad_id": f"ad{k}", "campaign_id": "obd-all", "features": {"f": float(k)}}
            for k in range(5)
        ],
    }


@pytest.fixture(scope="module")
def swap_worker() -> Iterator[tuple[Any, Settings]]:
    """A worker with its own queue, key prefix and HMAC key, and matching settings."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "ADORCH_QUEUE": f"{os.environ['ADORCH_QUEUE']}-swap-{tag}",
        "ADORCH_KEY_PREFIX": f"swap{tag}",
        "ADORCH_WEIGHTS_HMAC_KEY": HMAC_KEY,
    }
    worker = start_worker(f"swap-{tag}", extra_env=env)
    settings = load_settings(
        queue=env["ADORCH_QUEUE"],
        key_prefix=env["ADORCH_KEY_PREFIX"],
        weights_hmac_key=HMAC_KEY,
    )
    yield worker, settings
    worker.stop()


def publish_seeded(store: WeightStore, seed: int) -> int:
    """Publish a ContentQNet (as the agent builds it) with seeded weights."""
    torch.manual_seed(seed)
    net = ContentQNet()
    return store.publish(
        "content",
        net.state_dict(),
        {"input_schema": ContentQNet.INPUT_SCHEMA, "data": f"seed {seed}"},
    )


def decide_many(settings: Settings, label: str) -> list[Decision]:
    """Make `N_DECISIONS` decisions through the deadline-aware client, one by one."""
    from ad_orchestrator.client import decide

    return [
        decide(make_request(f"{label}-{i}"), settings=settings, timeout=10.0)
        for i in range(N_DECISIONS)
    ]


def content_versions(decisions: list[Decision]) -> set[str | None]:
    """Return the Content weights versions the decisions report."""
    return {d.weights_versions.get("content") for d in decisions}


def assert_all_succeeded(decisions: list[Decision]) -> None:
    """No decision fell back, and no agent fell back inside one."""
    assert [d.fallback for d in decisions] == [False] * len(decisions)
    assert [d.agent_fallbacks for d in decisions] == [{}] * len(decisions)
    assert {d.outcome for d in decisions} == {"bid"}


def test_promotion_rollback_and_a_tampered_blob_in_a_running_worker(
    swap_worker, redis_url
):
    """N serves, N+1 after promotion, N after rollback; a bad blob is refused."""
    worker, settings = swap_worker
    pid = worker.process.pid
    store = WeightStore(redis.Redis.from_url(redis_url), settings)
    first = publish_seeded(store, 1)
    store.set_serving("content", first)
    time.sleep(AFTER_CHECK_S)

    # N serves.
    before = decide_many(settings, "before")

    # Promote N+1: the next tasks swap, with no restart.
    second = publish_seeded(store, 2)
    store.set_serving("content", second)
    time.sleep(AFTER_CHECK_S)
    after = decide_many(settings, "after")

    # Roll back: N again.
    assert store.rollback("content") == first
    time.sleep(AFTER_CHECK_S)
    rolled_back = decide_many(settings, "rolled-back")

    # A tampered blob reaches the pointer (verification skipped, as an attacker
    # writing to Redis would): it is refused and N keeps serving.
    bad = publish_seeded(store, 3)
    store.redis.append(store.blob_key("content", bad), b"\x00")
    store.set_serving("content", bad, verify=False)
    time.sleep(AFTER_CHECK_S)
    while_tampered = decide_many(settings, "tampered")

    assert content_versions(before) == {str(first)}
    assert content_versions(after) == {str(second)}
    assert content_versions(rolled_back) == {str(first)}
    assert content_versions(while_tampered) == {str(first)}
    for decisions in (before, after, rolled_back, while_tampered):
        assert_all_succeeded(decisions)
    assert worker.process.poll() is None and worker.process.pid == pid
    log = worker.log_text()
    assert f"refused weights for agent=content version={bad}" in log
    assert "fail their HMAC" in log
