"""The decision pipeline end to end: real broker, real worker, real result backend.

Nothing in the chord path is mocked or run eagerly. Faults are injected the way an
operator would, through settings of a separate worker on its own queue.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.schemas import Decision
from ad_orchestrator.settings import Settings
from tests.conftest import start_worker

pytestmark = pytest.mark.integration


def make_request(rid: str, campaign: str = "obd-all", n_ads: int = 5) -> dict[str, Any]:
    return {
        "request_id": rid,
        "timestamp": "2019-11-25T10:00:00Z",
        "user": {"id": "user-42", "features": {"user_feature_0": "abc"}},
        "slots": [{"slot_id": "s1", "position": 1}],
        "candidates": [
            {"ad_id": f"ad{k}", "campaign_id": campaign, "features": {"f": float(k)}}
            for k in range(n_ads)
        ],
    }


def test_gather_results_returns_a_decision(celery_worker: Any) -> None:
    """`gather_results.delay(request).get(timeout=5)` hands back a Decision."""
    from ad_orchestrator.app import gather_results

    decision = gather_results.delay(make_request("one")).get(timeout=5)

    assert isinstance(decision, Decision)
    assert decision.request_id == "one"
    assert decision.outcome == "bid"
    assert decision.ad_id in {f"ad{k}" for k in range(5)}
    assert set(decision.agent_timings_ms) == {"context", "content", "budget", "policy"}
    assert decision.agent_fallbacks == {}
    assert 0 < (decision.propensity or 0) <= 1


def test_a_batch_keeps_its_order(celery_worker: Any) -> None:
    """A batch answers one decision per request, in the order sent."""
    from ad_orchestrator.app import gather_results

    rids = [f"batch-{i}" for i in range(40)]

    decisions = gather_results.delay([make_request(r) for r in rids]).get(timeout=20)

    assert [d.request_id for d in decisions] == rids


def test_a_malformed_request_is_an_error_naming_the_field(celery_worker: Any) -> None:
    """Validation errors reach the caller with the field's path."""
    from ad_orchestrator.app import gather_results

    bad = make_request("bad")
    bad["slots"][0]["bidfloor_cpm"] = -3

    with pytest.raises(RequestValidationError, match="slots.0.bidfloor_cpm"):
        gather_results.delay(bad).get(timeout=5)
    # The worker survived: the next request is decided.
    assert gather_results.delay(make_request("after")).get(timeout=5).request_id


def test_the_client_helper_decides_within_the_deadline(celery_worker: Any) -> None:
    """The deadline-aware helper returns the real decision when there is time."""
    from ad_orchestrator.client import decide

    decision = decide(make_request("client"), timeout=5.0)

    assert decision.fallback is False
    assert decision.request_id == "client"


def test_with_no_worker_the_client_serves_the_fallback_in_time(
    settings: Settings,
) -> None:
    """No worker on the queue: a marked fallback comes back by the deadline."""
    from ad_orchestrator.client import decide

    nobody = settings.model_copy(update={"queue": "adorch-test-nobody"})
    started = time.monotonic()

    decision = decide(make_request("late"), settings=nobody, timeout=0.3)

    elapsed = time.monotonic() - started
    assert decision.fallback is True
    assert decision.no_bid_reason == "deadline"
    assert elapsed < 0.3 + 0.25


@pytest.fixture
def chaos_worker(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Settings]]:
    """A worker on its own queue whose named agent fails on every batch."""
    agent = request.param
    queue = f"{os.environ['ADORCH_QUEUE']}-chaos-{agent}"
    worker = start_worker(
        f"chaos-{agent}",
        extra_env={"ADORCH_QUEUE": queue, "ADORCH_CHAOS_FAIL_AGENTS": f'["{agent}"]'},
    )
    from ad_orchestrator.settings import load_settings

    yield worker, load_settings(queue=queue)
    worker.stop()


@pytest.mark.parametrize("chaos_worker", ["content"], indirect=True)
def test_a_failing_agent_yields_a_decision_marked_with_its_fallback(
    chaos_worker: tuple[Any, Settings],
) -> None:
    """Content raising still gives a decision, marked with Content's fallback."""
    from ad_orchestrator.client import decide

    worker, settings = chaos_worker

    decision = decide(make_request("chaos-content"), settings=settings, timeout=10)

    assert decision.fallback is False
    assert "content" in decision.agent_fallbacks
    assert "chaos" in decision.agent_fallbacks["content"]
    assert decision.outcome == "bid"
    assert "attempt 3/3" in worker.log_text()


@pytest.mark.parametrize("chaos_worker", ["policy"], indirect=True)
def test_a_failing_policy_yields_no_ad(chaos_worker: tuple[Any, Settings]) -> None:
    """Policy fails closed: no ad is served when it cannot answer."""
    from ad_orchestrator.client import decide

    _, settings = chaos_worker

    decision = decide(make_request("chaos-policy"), settings=settings, timeout=10)

    assert decision.outcome == "no_bid"
    assert decision.no_bid_reason == "policy_failed"
    assert "policy" in decision.agent_fallbacks


def test_concurrent_decisions_never_overspend(
    tmp_path: Path, settings: Settings, redis_url: str
) -> None:
    """200 concurrent decisions on budget for 10 impressions overspend by < 1 bid."""
    bid = 2.0
    campaigns = tmp_path / "campaigns.yaml"
    campaigns.write_text(
        f"campaigns:\n  tiny:\n    budget: {10 * bid / 1000}\n"
        f"    base_cpm: {bid}\n    max_cpm: {bid}\n"
    )
    queue = f"{settings.queue}-budget"
    worker = start_worker(
        "budget",
        concurrency=4,
        extra_env={"ADORCH_QUEUE": queue, "ADORCH_CAMPAIGNS_PATH": str(campaigns)},
    )
    from ad_orchestrator.client import decide
    from ad_orchestrator.ledger import BudgetLedger, load_campaigns

    own = settings.model_copy(update={"queue": queue, "campaigns_path": campaigns})
    ledger = BudgetLedger(
        redis.Redis.from_url(redis_url), own, load_campaigns(campaigns)
    )
    ledger.reset(["tiny"])
    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            decisions = list(
                pool.map(
                    lambda i: decide(
                        make_request(f"race-{i}", "tiny"), settings=own, timeout=30
                    ),
                    range(200),
                )
            )
    finally:
        worker.stop()

    state = ledger.states(["tiny"])["tiny"]
    bids = [d for d in decisions if d.outcome == "bid"]
    assert len(decisions) == 200
    assert not any(d.fallback for d in decisions)
    assert state.spent + state.reserved <= state.budget + bid / 1000
    assert sum(d.bid_cpm or 0 for d in bids) / 1000 <= state.budget + bid / 1000
    assert {d.no_bid_reason for d in decisions if d.outcome == "no_bid"} <= {
        "budget_exhausted"
    }
    assert 10 <= len(bids) <= 20


def test_a_batch_with_repeated_request_ids_is_refused(celery_worker: Any) -> None:
    """Answers are joined by request id, so a repeated id is a validation error."""
    from ad_orchestrator.client import decide

    with pytest.raises(RequestValidationError, match=r"1\.request_id"):
        decide([make_request("same"), make_request("same")], timeout=5)
