"""The Budget agent: which ads can still be paid for, and at what bid.

For every campaign in the batch it reads spend and reservations from the shared ledger
(one round trip) and a pacing multiplier, then bids per ad like linear bidding: the
campaign's base CPM times the multiplier times the ad's value relative to the
request's other candidates (from Content's scores). Ads whose campaign cannot pay one
more impression at that bid are ineligible. The reservation itself happens in the
reducer for the one ad chosen, atomically, so concurrent workers never overspend.

The multiplier comes from the learned pacing policy when Budget weights serve
(`make train-budget`): each campaign's flight is cut into `PACING_SLOTS` slots, and
at each slot's start the DQN (trained on the iPinYou log, `rl.pacing`) scales the
campaign's multiplier by one of its steps, from the last slot's spend, wins,
auctions and prices; the state lives in Redis (`ad_orchestrator.pacing_state`), so
any worker can serve any campaign. Without weights, the multiplier is the even-pacing
ratio of planned to actual spend.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import cast

import numpy as np
import redis
from torch import nn

from ad_orchestrator.ledger import (
    MICROS,
    BudgetLedger,
    Campaign,
    CampaignState,
    load_campaigns,
)
from ad_orchestrator.pacing_state import PacingState, PacingStore
from ad_orchestrator.schemas import AdRequest, BudgetOutput
from ad_orchestrator.settings import Settings
from ad_orchestrator.weights import ServingModel, WeightStore
from rl.pacing import (
    MAX_MULTIPLIER,
    MIN_MULTIPLIER,
    PacingPolicy,
    PacingQNet,
    pacing_state,
)
from tasks.base import Agent, Upstream

log = logging.getLogger(__name__)

PACING_MIN = 0.25
PACING_MAX = 2.0
VALUE_MIN = 0.5
VALUE_MAX = 2.0
# Smooths the plan/spend ratio at the very start of a flight, when both are ~0.
PACING_SMOOTHING = 0.02
# Slots per flight for the learned pacer, as in its training episodes (rl.pacing).
PACING_SLOTS = 20


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


def slot_of(campaign: Campaign, at: datetime, slots: int = PACING_SLOTS) -> int:
    """Return the pacing slot (0 to `slots - 1`) a time falls in."""
    return min(int(campaign.planned_fraction(at) * slots), slots - 1)


class BudgetAgent(Agent[BudgetOutput]):
    """Eligibility by remaining budget, learned or even pacing, value-scaled bids."""

    name = "budget"

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        super().__init__(settings, client)
        self.ledger = BudgetLedger(
            client, settings, load_campaigns(settings.campaigns_path)
        )
        self.pacing = PacingStore(client, settings)
        self.pacer = ServingModel(WeightStore(client, settings), "budget", PacingQNet)
        self._version: str | None = None

    def weights_version(self) -> str | None:
        return self._version

    def warm_up(self) -> None:
        """Load the serving pacing weights now, not inside the first batch."""
        _, self._version = self.pacer.load_now()

    def decide(
        self, requests: Sequence[AdRequest], upstream: Upstream
    ) -> list[BudgetOutput]:
        net, self._version = self.pacer.current()
        known = self.ledger.campaigns
        in_batch = {
            ad.campaign_id
            for request in requests
            for ad in request.candidates
            if ad.campaign_id in known
        }
        states = self.ledger.states(sorted(in_batch))
        learned: dict[str, float] = {}
        if self._version is not None and in_batch:
            latest = max(request.timestamp for request in requests)
            learned = self._learned_multipliers(net, states, latest)
        outputs = [
            self._decide_one(request, upstream, states, learned) for request in requests
        ]
        # One auction per request and campaign that could bid in it.
        self.pacing.count_auctions(
            Counter(
                campaign
                for request, output in zip(requests, outputs, strict=True)
                for campaign in {
                    ad.campaign_id
                    for ad in request.candidates
                    if ad.ad_id in output.bids
                }
            )
        )
        return outputs

    def _learned_multipliers(
        self, net: nn.Module, states: dict[str, CampaignState], at: datetime
    ) -> dict[str, float]:
        """Advance each campaign's pacing slot if due; return its multiplier."""
        policy = PacingPolicy(net)
        paced = self.pacing.read(states)
        wins = self._wins(states)
        multipliers = {}
        for campaign_id, state in states.items():
            current = paced[campaign_id]
            campaign = self.ledger.campaigns[campaign_id]
            slot = slot_of(campaign, at)
            if slot <= current.slot:
                multipliers[campaign_id] = current.multiplier
                continue
            spent_micros = round((state.spent + state.reserved) * MICROS)
            factor = self._factor(
                policy, campaign, state, current, slot, spent_micros, wins[campaign_id]
            )
            new = float(
                np.clip(current.multiplier * factor, MIN_MULTIPLIER, MAX_MULTIPLIER)
            )
            moved = self.pacing.advance(
                campaign_id,
                read_slot=current.slot,
                new_slot=slot,
                multiplier=new,
                spent_micros=spent_micros,
                wins=wins[campaign_id],
                auctions=current.auctions,
            )
            if moved:
                log.info(
                    "budget pacing: campaign %s slot %d multiplier %.3f -> %.3f",
                    campaign_id, slot, current.multiplier, new,
                )  # fmt: skip
                multipliers[campaign_id] = new
            else:  # another worker moved it first: use what it wrote
                multipliers[campaign_id] = self.pacing.read([campaign_id])[
                    campaign_id
                ].multiplier
        return multipliers

    def _factor(
        self,
        policy: PacingPolicy,
        campaign: Campaign,
        state: CampaignState,
        current: PacingState,
        slot: int,
        spent_micros: int,
        wins: int,
    ) -> float:
        # Money in "CPM units" (currency x 1000) as in the pacer's training log,
        # where a win's price and the reference CPM are in the same unit.
        last_spend = (spent_micros - (current.spent_at_micros or spent_micros)) / 1000
        features = pacing_state(
            slot=slot,
            slots=PACING_SLOTS,
            remaining=np.array([state.remaining * 1000]),
            budget=state.budget * 1000,
            last_spend=np.array([last_spend]),
            last_wins=np.array([float(wins - (current.wins_at or wins))]),
            last_auctions=current.auctions - (current.auctions_at or current.auctions),
            cpm_train=campaign.base_cpm,
            multiplier=np.array([current.multiplier]),
        )
        return float(policy.step(features)[0])

    def _wins(self, states: dict[str, CampaignState]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for campaign_id in states:
            pipe.hget(self.settings.key("counters", campaign_id), "impressions")
        raw = cast(list[bytes | None], pipe.execute())
        return {c: int(v or 0) for c, v in zip(states, raw, strict=True)}

    def _decide_one(
        self,
        request: AdRequest,
        upstream: Upstream,
        states: dict[str, CampaignState],
        learned: dict[str, float],
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
                if ad.campaign_id in learned:
                    pacing[ad.campaign_id] = learned[ad.campaign_id]
                else:
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
