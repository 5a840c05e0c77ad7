"""Feedback is recorded once per event id and moves counters exactly."""

from __future__ import annotations

import pytest
import redis

from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.feedback import FeedbackLog
from ad_orchestrator.ledger import BudgetLedger, Campaign
from ad_orchestrator.settings import Settings


@pytest.fixture
def feedback(redis_client: redis.Redis, settings: Settings) -> FeedbackLog:
    ledger = BudgetLedger(
        redis_client, settings, {"c": Campaign(budget=1.0, base_cpm=2, max_cpm=2)}
    )
    ledger.reset(["c"])
    ledger.reserve("c", "d1", 2.0)
    redis_client.hset(settings.key("decision", "d1"), mapping={"campaign": "c"})
    return FeedbackLog(redis_client, settings, ledger)


def test_a_duplicate_event_is_counted_once(
    feedback: FeedbackLog, redis_client: redis.Redis, settings: Settings
) -> None:
    """Delivering the same click twice adds one stream entry and one click."""
    event = {"event_id": "e1", "decision_id": "d1", "kind": "click"}

    first = feedback.record(event)
    second = feedback.record(event)

    assert (first.duplicate, second.duplicate) == (False, True)
    assert feedback.counters("c")["clicks"] == 1
    assert redis_client.xlen(settings.feedback_stream) == 1


def test_an_impression_settles_the_reservation(feedback: FeedbackLog) -> None:
    """The impression's price becomes spend; replaying it spends nothing more."""
    event = {"event_id": "i1", "decision_id": "d1", "kind": "impression", "value": 1.5}

    recorded = feedback.record(event)
    feedback.record(event)

    state = feedback.ledger.states(["c"])["c"]
    assert recorded.settled == pytest.approx(0.0015)
    assert state.spent == pytest.approx(0.0015)
    assert state.reserved == pytest.approx(0.0)
    assert feedback.counters("c")["impressions"] == 1


def test_a_bad_event_changes_nothing(
    feedback: FeedbackLog, redis_client: redis.Redis, settings: Settings
) -> None:
    """A malformed event is refused before anything is written."""
    with pytest.raises(RequestValidationError, match="kind"):
        feedback.record({"event_id": "e", "decision_id": "d1", "kind": "hover"})

    assert redis_client.xlen(settings.feedback_stream) == 0
    assert feedback.counters("c") == {}


def test_the_stream_keeps_arrival_order(
    feedback: FeedbackLog, redis_client: redis.Redis, settings: Settings
) -> None:
    """Events read back in the order they were recorded."""
    for i in range(5):
        feedback.record({"event_id": f"e{i}", "decision_id": "d1", "kind": "click"})

    entries = redis_client.xrange(settings.feedback_stream)

    assert [e[1][b"event_id"] for e in entries] == [f"e{i}".encode() for i in range(5)]


def test_an_impression_counts_towards_the_users_frequency_caps(
    feedback: FeedbackLog, redis_client: redis.Redis, settings: Settings
) -> None:
    """The served user's hashed id is capped on impression, once per event."""
    redis_client.hset(settings.key("decision", "d1"), "user", "u-hash")
    event = {"event_id": "i9", "decision_id": "d1", "kind": "impression", "value": 1}

    feedback.record(event)
    feedback.record(event)

    counters = [
        int(redis_client.get(k)) for k in redis_client.scan_iter("adorch:freq:*")
    ]
    assert counters and set(counters) == {1}
