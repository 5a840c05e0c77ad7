"""The Budget agent: which ads can still be paid for, and at what bid.

For every campaign in the batch it reads spend and reservations from the shared ledger
(one round trip), computes an even-pacing multiplier (ahead of plan: bid less; behind:
bid more), and bids per ad like linear bidding: the campaign's base CPM times the
pacing multiplier times the ad's value relative to the request's other candidates
(from Content's scores). Ads whose campaign cannot pay one more impression at that bid
are ineligible. The actual reservation happens in the reducer for the one ad chosen,
atomically, so concurrent workers never overspend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import redis

from ad_orchestrator.ledger import BudgetLedger, CampaignState, load_campaigns
from ad_orchestrator.schemas import AdRequest, BudgetOutput
from ad_orchestrator.settings import Settings
from tasks.base import Agent, Upstream

PACING_MIN = 0.25
PACING_MAX = 2.0
VALUE_MIN = 0.5
VALUE_MAX = 2.0
# Smooths the plan/spend ratio at the very start of a flight, when both are ~0.
PACING_SMOOTHING = 0.02


def even_pacing(planned: float, spent: float) -> float:
    """Return the bid multiplier that steers spend towards an even plan.

    Args:
        planned: Fraction of the budget the plan has spent by now (0 to 1).
        spent: Fraction actually spent or reserved (0 to 1).
    """
    ratio = (planned + PACING_SMOOTHING) / (spent + PACING_SMOOTHING)
    return float(np.clip(ratio, PACING_MIN, PACING_MAX))


def value_ratios(scores: np.ndarray) -> np.ndarray:
    """Turn a request's ad scores into bid scalers around 1 (shape `(n_ads,)`)."""
    if scores.size == 0:
        return scores
    value = 1.0 / (1.0 + np.exp(-scores))
    mean = float(value.mean())
    if mean <= 0:
        return np.ones_like(value)
    return np.clip(value / mean, VALUE_MIN, VALUE_MAX)


class BudgetAgent(Agent[BudgetOutput]):
    """Eligibility by remaining budget, even pacing and value-scaled bids."""

    name = "budget"

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        super().__init__(settings, client)
        self.ledger = BudgetLedger(
            client, settings, load_campaigns(settings.campaigns_path)
        )

    def decide(
        self, requests: Sequence[AdRequest], upstream: Upstream
    ) -> list[BudgetOutput]:
        known = self.ledger.campaigns
        states = self.ledger.states(
            ad.campaign_id
            for request in requests
            for ad in request.candidates
            if ad.campaign_id in known
        )
        return [self._decide_one(request, upstream, states) for request in requests]

    def _decide_one(
        self,
        request: AdRequest,
        upstream: Upstream,
        states: dict[str, CampaignState],
    ) -> BudgetOutput:
        content = upstream.content(request.request_id)
        scores = np.array(
            [
                (content.contextual or content.relevance).get(ad.ad_id, 0.0)
                if content
                else 0.0
                for ad in request.candidates
            ],
            dtype=np.float64,
        )
        ratios = value_ratios(scores)
        bids: dict[str, float] = {}
        pacing: dict[str, float] = {}
        ineligible: dict[str, str] = {}
        for ad, ratio in zip(request.candidates, ratios, strict=True):
            state = states.get(ad.campaign_id)
            if state is None:
                ineligible[ad.ad_id] = "unknown_campaign"
                continue
            campaign = self.ledger.campaigns[ad.campaign_id]
            if ad.campaign_id not in pacing:
                planned = campaign.planned_fraction(request.timestamp)
                spent = (state.spent + state.reserved) / state.budget
                pacing[ad.campaign_id] = even_pacing(planned, spent)
            ceiling = min(campaign.max_cpm, ad.max_cpm)
            bid = min(campaign.base_cpm * pacing[ad.campaign_id] * ratio, ceiling)
            if state.remaining * 1000 < bid:
                ineligible[ad.ad_id] = "budget_exhausted"
                continue
            bids[ad.ad_id] = round(bid, 6)
        return BudgetOutput(
            request_id=request.request_id,
            bids=bids,
            pacing=pacing,
            ineligible=ineligible,
        )

    def fallback(
        self, requests: Sequence[AdRequest], upstream: Upstream, reason: str
    ) -> list[BudgetOutput]:
        # Without the ledger nothing can be paid for safely: no bid for any campaign.
        return [
            BudgetOutput(
                request_id=request.request_id,
                bids={},
                ineligible={
                    ad.ad_id: "budget_unavailable" for ad in request.candidates
                },
            )
            for request in requests
        ]


from ad_orchestrator.app import agent_task  # noqa: E402 - the task wraps the class

task = agent_task(BudgetAgent)
