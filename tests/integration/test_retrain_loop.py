"""The whole learning loop on our own traffic, with a real worker and real Redis.

Decisions made by the worker fill the decision stream, clicks go through the
`record_feedback` task, the retrain reads both, trains, passes the gate (nothing
serves yet, so it must beat the logging policy, the service's own uniform
exploration, on held-out rows: clicks on two of the five ads make that learnable)
and publishes; the running worker then decides with the new version.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ad_orchestrator.settings import Settings, load_settings
from ad_orchestrator.weights import WeightStore
from rl.networks import ContentQNet
from tasks.retrain import RetrainOptions, retrain
from tests.conftest import start_worker

pytestmark = pytest.mark.integration

HMAC_KEY = "retrain-loop-test-key-" + "0" * 10
N_REQUESTS = 150


@pytest.fixture(scope="module")
def loop_worker() -> Iterator[tuple[Any, Settings]]:
    """A worker with its own queue, key prefix, feedback stream and HMAC key."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "ADORCH_QUEUE": f"{os.environ['ADORCH_QUEUE']}-loop-{tag}",
        "ADORCH_KEY_PREFIX": f"loop{tag}",
        "ADORCH_FEEDBACK_STREAM": f"loop{tag}:feedback",
        "ADORCH_WEIGHTS_HMAC_KEY": HMAC_KEY,
    }
    worker = start_worker(f"loop-{tag}", extra_env=env)
    settings = load_settings(
        queue=env["ADORCH_QUEUE"],
        key_prefix=env["ADORCH_KEY_PREFIX"],
        feedback_stream=env["ADORCH_FEEDBACK_STREAM"],
        weights_hmac_key=HMAC_KEY,
    )
    yield worker, settings
    worker.stop()


def make_request(i: int) -> dict[str, Any]:
    """A request with five candidates whose features differ."""
    return {
        "request_id": f"loop-{i}",
        "timestamp": f"2019-11-25T{i % 24:02d}:00:00Z",
        "user": {"id": f"user-{i % 17}", "features": {"segment": f"s{i % 3}"}},
        "slots": [{"slot_id": "s1", "position": 1 + i % 3}],
        "candidates": [
            {
                "ad_id": f"ad{k}",
                "campaign_id": "obd-all",
                "features": {"price": float(k), "brand": f"b{k % 2}"},
            }
            for k in range(5)
        ],
    }


def test_own_traffic_retrains_promotes_and_serves(loop_worker, redis_url, tmp_path):
    """Own logs -> retrain -> gate -> publish -> the same worker serves version 1."""
    from ad_orchestrator.app import record_feedback
    from ad_orchestrator.client import decide

    worker, settings = loop_worker
    requests = [make_request(i) for i in range(N_REQUESTS)]
    decisions = decide(requests, settings=settings, timeout=60.0)
    bids = [d for d in decisions if d.outcome == "bid"]
    # Clicks on two of the ads, and on every fifth bid so that some arrive
    # whichever ads the untrained model prefers.
    clicked = [d for j, d in enumerate(bids) if d.ad_id in {"ad0", "ad1"} or j % 5 == 0]
    for d in clicked:
        event = {
            "event_id": f"click-{d.decision_id}",
            "decision_id": d.decision_id,
            "kind": "click",
        }
        record_feedback.apply_async((event,), queue=settings.queue).get(timeout=10)
    client = redis.Redis.from_url(redis_url)
    options = RetrainOptions(
        min_new=100, min_clicks=3, min_age_s=0, steps=300, out_dir=tmp_path
    )

    summary = retrain(settings, client, options, now=time.time() + 1)
    time.sleep(0.8)  # past the ServingModel's pointer check interval
    after = decide(make_request(999), settings=settings, timeout=10.0)

    assert len(bids) >= 100
    assert summary["status"] == "promoted", json.dumps(summary, default=str)[:3000]
    assert summary["version"] == 1
    assert summary["rows"] == len(bids)
    assert summary["clicks"] == len(clicked)
    store = WeightStore(client, settings)
    _, meta = store.load("content", 1, ContentQNet.INPUT_SCHEMA)
    assert meta["data"]["source"] == "decision stream"
    assert meta["data"]["n_ads"] == 5
    assert after.weights_versions["content"] == "1"
    assert after.fallback is False and after.agent_fallbacks == {}
