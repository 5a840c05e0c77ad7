"""The reducer joins agent results by name and always returns a decision."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from ad_orchestrator.ledger import BudgetLedger, Campaign
from ad_orchestrator.reducer import Reducer, epsilon_greedy
from ad_orchestrator.schemas import AdRequest, parse_request
from ad_orchestrator.settings import Settings
from tasks.base import Upstream

ADS = ("a", "b", "c")


def request(rid: str = "r1", floor: float = 0.0) -> AdRequest:
    return parse_request(
        {
            "request_id": rid,
            "timestamp": "2024-05-01T12:00:00Z",
            "slots": [{"slot_id": "s1", "bidfloor_cpm": floor}],
            "candidates": [{"ad_id": ad, "campaign_id": "c"} for ad in ADS],
        }
    )


def results(
    rid: str = "r1",
    *,
    allowed: tuple[str, ...] = ADS,
    bids: dict[str, float] | None = None,
    relevance: dict[str, float] | None = None,
    bot: bool = False,
    policy_fallback: bool = False,
    personalised: bool = True,
) -> dict[str, Any]:
    def result(agent: str, output: dict[str, Any], fallback: bool = False) -> Any:
        return {"agent": agent, "fallback": fallback, "outputs": [output]}

    context = {"request_id": rid, "vector": [0.0], "hour": 1, "weekday": 1,
               "device_class": "desktop", "country": None, "is_bot": bot}  # fmt: skip
    return {
        # Deliberately not in graph order: the reducer must join by name.
        "policy": result(
            "policy",
            {"request_id": rid, "allowed": list(allowed), "personalised": personalised},
            policy_fallback,
        ),
        "budget": result(
            "budget", {"request_id": rid, "bids": bids or dict.fromkeys(ADS, 2.0)}
        ),
        "context": result("context", context),
        "content": result(
            "content",
            {
                "request_id": rid,
                "relevance": relevance or {"a": 0.1, "b": 0.9, "c": 0.2},
                "contextual": {"a": 0.9, "b": 0.1, "c": 0.2},
            },
        ),
    }


@pytest.fixture
def reducer(redis_client: redis.Redis, settings: Settings) -> Reducer:
    settings = settings.model_copy(update={"epsilon": 0.0})
    ledger = BudgetLedger(
        redis_client, settings, {"c": Campaign(budget=1.0, base_cpm=2, max_cpm=4)}
    )
    ledger.reset(["c"])
    return Reducer(settings, redis_client, ledger, np.random.default_rng(0))


def test_the_best_allowed_ad_wins_and_is_reserved(reducer: Reducer) -> None:
    """With no exploration the highest personalised score is served."""
    [decision] = reducer.reduce([request()], Upstream(results()))

    assert (decision.outcome, decision.ad_id, decision.bid_cpm) == ("bid", "b", 2.0)
    assert decision.propensity == pytest.approx(1.0)
    assert reducer.ledger.states(["c"])["c"].reserved == pytest.approx(0.002)


def test_without_consent_the_contextual_score_decides(reducer: Reducer) -> None:
    """Policy's `personalised=False` switches scoring to the contextual score."""
    [decision] = reducer.reduce([request()], Upstream(results(personalised=False)))

    assert decision.ad_id == "a"
    assert decision.personalised is False


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"bot": True}, "bot_traffic"),
        ({"policy_fallback": True}, "policy_failed"),
        ({"allowed": ()}, "policy_denied_all"),
        ({"bids": {"x": 1.0}}, "budget_exhausted"),
    ],
)
def test_no_bid_reasons(reducer: Reducer, changes: dict[str, Any], reason: str) -> None:
    """Every way to serve nothing says why."""
    [decision] = reducer.reduce([request()], Upstream(results(**changes)))

    assert decision.outcome == "no_bid"
    assert decision.no_bid_reason == reason
    assert decision.ad_id is None


def test_bids_under_the_floor_are_not_served(reducer: Reducer) -> None:
    """A slot's floor above every bid gives a below-floor no-bid."""
    [decision] = reducer.reduce([request(floor=5.0)], Upstream(results()))

    assert decision.no_bid_reason == "below_floor"


def test_denied_ads_are_never_served(reducer: Reducer) -> None:
    """An ad Policy did not allow is never chosen, even when exploring."""
    reducer.settings = reducer.settings.model_copy(update={"epsilon": 1.0})
    rids = [f"r{i}" for i in range(60)]
    joined: dict[str, Any] = {}
    for rid in rids:
        for agent, result in results(rid, allowed=("a", "c")).items():
            joined.setdefault(agent, {**result, "outputs": []})
            joined[agent]["outputs"] += result["outputs"]

    decisions = reducer.reduce([request(rid) for rid in rids], Upstream(joined))

    served = {d.ad_id for d in decisions}
    assert served == {"a", "c"}
    assert all(d.propensity == pytest.approx(0.5) for d in decisions)


def test_epsilon_greedy_records_the_probability_of_its_choice() -> None:
    """Greedy gets 1 - eps + eps/n; every other ad eps/n."""
    rng = np.random.default_rng(1)
    scores = np.array([0.1, 0.5, 0.2, 0.0])
    picks = [epsilon_greedy(scores, 0.2, rng) for _ in range(4000)]

    greedy = [p for p in picks if p.index == 1]
    assert greedy[0].propensity == pytest.approx(0.8 + 0.05)
    assert all(p.propensity == pytest.approx(0.05) for p in picks if p.index != 1)
    assert len(greedy) / len(picks) == pytest.approx(0.85, abs=0.03)


def test_an_exhausted_campaign_falls_back_to_no_bid(reducer: Reducer) -> None:
    """When the ledger refuses, the decision is a budget no-bid, not an overspend."""
    reducer.ledger.campaigns["c"] = Campaign(budget=0.001, base_cpm=2, max_cpm=4)

    [decision] = reducer.reduce([request()], Upstream(results()))

    assert decision.no_bid_reason == "budget_exhausted"
