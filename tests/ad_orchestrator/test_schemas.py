"""Requests and events are validated at the edge, with errors naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.schemas import Decision, parse_feedback, parse_request


def valid_request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "request_id": "r1",
        "timestamp": "2024-05-01T12:00:00Z",
        "slots": [{"slot_id": "s1", "position": 1}],
        "candidates": [{"ad_id": "a1", "campaign_id": "c1"}],
    }
    request.update(changes)
    return request


def test_a_valid_request_parses() -> None:
    """A minimal request with one slot and one candidate is accepted."""
    request = parse_request(valid_request())

    assert request.candidates[0].ad_id == "a1"
    assert request.timestamp.tzinfo is not None


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"request_id": ""}, "request_id", "at least 1 character"),
        ({"timestamp": "2024-05-01T12:00:00"}, "timestamp", "timezone"),
        ({"timestamp": "yesterday"}, "timestamp", "datetime"),
        ({"slots": []}, "slots", "at least 1 item"),
        ({"candidates": []}, "candidates", "at least 1 item"),
        ({"candidates": [{"ad_id": "a"}]}, "candidates.0.campaign_id", "required"),
        (
            {"candidates": [{"ad_id": "a", "campaign_id": "c"}] * 2},
            "candidates",
            "unique",
        ),
        ({"tmax_ms": -5}, "tmax_ms", "greater than 0"),
        ({"user": {"yob": 1800}}, "user.yob", "greater than or equal to 1900"),
        ({"geo": {"utcoffset": 5000}}, "geo.utcoffset", "less than or equal"),
        (
            {"slots": [{"slot_id": "s", "bidfloor_cpm": -1}]},
            "slots.0.bidfloor_cpm",
            ">=",
        ),
    ],
)
def test_a_malformed_request_names_the_field(
    change: dict[str, Any], field: str, expected: str
) -> None:
    """Each bad field is reported by its path with what was expected."""
    with pytest.raises(RequestValidationError, match=f"`{field}`") as caught:
        parse_request(valid_request(**change))

    problems = dict(caught.value.problems)
    assert field in problems
    assert expected.replace(">=", "greater than or equal") in problems[field]


def test_validation_error_survives_a_rebuild_from_its_args() -> None:
    """Celery rebuilds errors as `cls(*args)`; the message must stay the same."""
    with pytest.raises(RequestValidationError) as caught:
        parse_request(valid_request(slots=[]))

    rebuilt = RequestValidationError(*caught.value.args)

    assert str(rebuilt) == str(caught.value)
    assert rebuilt.to_dict()["problems"][0]["field"] == "slots"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"decision_id": "d", "kind": "click"}, "event_id"),
        ({"event_id": "e", "decision_id": "d", "kind": "view"}, "kind"),
        ({"event_id": "e", "decision_id": "d", "kind": "click", "value": -1}, "value"),
    ],
)
def test_a_malformed_feedback_event_names_the_field(
    event: dict[str, Any], field: str
) -> None:
    """Feedback events are validated like requests."""
    with pytest.raises(RequestValidationError, match=f"`{field}`"):
        parse_feedback(event)


def test_decision_ids_are_unique() -> None:
    """Every decision gets its own id unless one is given."""
    first = Decision(request_id="r", outcome="no_bid", no_bid_reason="deadline")
    second = Decision(request_id="r", outcome="no_bid", no_bid_reason="deadline")

    assert first.decision_id != second.decision_id
