"""Turn the agents' answers into one decision per request.

For each request: a bot gets no ad; otherwise the ads Policy allowed and Budget can
pay for (at or above the slot's floor) are scored (Content's personalised score when
Policy allows personalisation, its contextual score otherwise), one is chosen
epsilon-greedily, and its bid is reserved in the budget ledger. The probability with
which the chosen ad was picked among the eligible ones is recorded, so our own logs
support unbiased off-policy evaluation. Results are joined by agent name and request
id, never by position.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis

from ad_orchestrator import metrics
from ad_orchestrator.ledger import BudgetLedger
from ad_orchestrator.logging import log_context
from ad_orchestrator.schemas import AdRequest, Decision, NoBidReason, new_id
from ad_orchestrator.settings import Settings
from policies.frequency import user_hash
from tasks.base import Upstream

log = logging.getLogger(__name__)

DECISION_RECORD_TTL_S = 7 * 24 * 3600
MSG_DECIDED = "decided %s %s at %s CPM with weights %s"


@dataclass(frozen=True, slots=True)
class Choice:
    """An ad picked among eligible ones, and the probability of picking it."""

    index: int
    propensity: float
    explored: bool


def epsilon_greedy(
    scores: np.ndarray, epsilon: float, rng: np.random.Generator
) -> Choice:
    """Pick an index from `(n,)` scores; ties at the top share the greedy mass."""
    n = scores.shape[0]
    best = np.flatnonzero(scores == scores.max())
    probs = np.full(n, epsilon / n)
    probs[best] += (1.0 - epsilon) / best.size
    index = int(rng.choice(n, p=probs / probs.sum()))
    return Choice(
        index=index, propensity=float(probs[index]), explored=index not in best
    )


class Reducer:
    """Combines agent results into decisions and reserves the chosen bids."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        ledger: BudgetLedger,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.ledger = ledger
        self.rng = rng or np.random.default_rng(settings.seed)
        self._ads_logged: set[str] = set()

    def reduce(
        self, requests: Sequence[AdRequest], upstream: Upstream
    ) -> list[Decision]:
        """Return one decision per request, in order, and log them for learning."""
        decisions = [self._decide(request, upstream) for request in requests]
        self._record(requests, decisions, upstream)
        for decision in decisions:
            with log_context(
                request_id=decision.request_id, decision_id=decision.decision_id
            ):
                log.debug(
                    MSG_DECIDED,
                    decision.outcome,
                    decision.ad_id or decision.no_bid_reason,
                    decision.bid_cpm,
                    decision.weights_versions,
                )
        return decisions

    def _no_bid(
        self, request: AdRequest, reason: NoBidReason, **extra: object
    ) -> Decision:
        return Decision(
            request_id=request.request_id,
            outcome="no_bid",
            no_bid_reason=reason,
            **extra,  # type: ignore[arg-type]
        )

    def _decide(self, request: AdRequest, upstream: Upstream) -> Decision:
        rid = request.request_id
        common = {
            "agent_fallbacks": dict(upstream.fallbacks),
            "weights_versions": dict(upstream.versions),
            "agent_timings_ms": dict(upstream.timings_ms),
        }
        context = upstream.context(rid)
        policy = upstream.policy(rid)
        content = upstream.content(rid)
        budget = upstream.budget(rid)
        if context is not None and context.is_bot:
            return self._no_bid(request, "bot_traffic", **common)
        if policy is None or "policy" in upstream.fallbacks:
            # Fail closed: no answer from Policy means nothing may be shown.
            return self._no_bid(request, "policy_failed", **common)
        common["rules_fired"] = list(policy.rules_fired)
        common["personalised"] = policy.personalised
        if policy.no_ad_reason is not None:
            return self._no_bid(request, policy.no_ad_reason, **common)
        allowed = set(policy.allowed) - set(policy.denied)
        if not allowed:
            return self._no_bid(request, "policy_denied_all", **common)
        bids = budget.bids if budget is not None else {}
        slot = request.slots[0]
        payable = [
            a for a in request.candidates if a.ad_id in allowed and a.ad_id in bids
        ]
        if not payable:
            why = {budget.ineligible.get(a, "") for a in allowed} if budget else set()
            reason: NoBidReason = (
                "unknown_campaign"
                if why == {"unknown_campaign"}
                else "budget_exhausted"
            )
            return self._no_bid(request, reason, **common)
        eligible = [a for a in payable if bids[a.ad_id] >= slot.bidfloor_cpm]
        if not eligible:
            return self._no_bid(request, "below_floor", **common)
        if content is None:
            table: dict[str, float] = {}
        elif policy.personalised:
            table = content.relevance
        else:
            table = content.contextual or {}
        decision_id = new_id()
        while eligible:
            scores = np.array([table.get(a.ad_id, 0.0) for a in eligible])
            choice = epsilon_greedy(scores, self.settings.epsilon, self.rng)
            ad = eligible[choice.index]
            bid = bids[ad.ad_id]
            if self.ledger.reserve(ad.campaign_id, decision_id, bid):
                return Decision(
                    request_id=rid,
                    decision_id=decision_id,
                    outcome="bid",
                    ad_id=ad.ad_id,
                    campaign_id=ad.campaign_id,
                    slot_id=slot.slot_id,
                    bid_cpm=bid,
                    propensity=choice.propensity,
                    explored=choice.explored,
                    **common,  # type: ignore[arg-type]
                )
            # The campaign ran out between Budget's look and now: drop all its ads.
            eligible = [a for a in eligible if a.campaign_id != ad.campaign_id]
        return self._no_bid(request, "budget_exhausted", **common)

    def _record(
        self,
        requests: Sequence[AdRequest],
        decisions: Sequence[Decision],
        upstream: Upstream,
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        stream = self.settings.key("decisions")
        for request, decision in zip(requests, decisions, strict=True):
            policy = upstream.policy(request.request_id)
            self._count(decision, policy.denied if policy else {})
            if decision.outcome != "bid":
                continue
            context = upstream.context(request.request_id)
            # Ad features go to one hash, once per ad and process, so the decision
            # stream can name candidates by id and still be replayed for training.
            new_ads = {
                a.ad_id: json.dumps(a.features)
                for a in request.candidates
                if a.ad_id not in self._ads_logged
            }
            if new_ads:
                pipe.hset(self.settings.key("ads"), mapping=new_ads)
                self._ads_logged.update(new_ads)
            pipe.hset(
                self.settings.key("decision", decision.decision_id),
                mapping={
                    "campaign": decision.campaign_id or "",
                    "ad": decision.ad_id or "",
                    "bid_cpm": decision.bid_cpm or 0.0,
                    # Salted hash only: frequency caps count by it on impression.
                    "user": user_hash(self.settings, request) or "",
                },
            )
            pipe.expire(
                self.settings.key("decision", decision.decision_id),
                DECISION_RECORD_TTL_S,
            )
            pipe.xadd(
                stream,
                {
                    "decision_id": decision.decision_id,
                    "request_id": request.request_id,
                    "ts": request.timestamp.isoformat(),
                    "context": json.dumps(
                        {
                            "hour": context.hour if context else None,
                            "weekday": context.weekday if context else None,
                            "device_class": context.device_class if context else None,
                            "country": context.country if context else None,
                            "position": request.slots[0].position,
                            "user_features": request.user.features
                            if decision.personalised
                            else {},
                        }
                    ),
                    "candidates": json.dumps([a.ad_id for a in request.candidates]),
                    "allowed": json.dumps(sorted(policy.allowed) if policy else []),
                    "chosen": decision.ad_id or "",
                    "propensity": decision.propensity or 0.0,
                },
                maxlen=self.settings.feedback_maxlen,
                approximate=True,
            )
        pipe.execute()

    @staticmethod
    def _count(decision: Decision, denied: dict[str, list[str]]) -> None:
        metrics.DECISIONS.labels(decision.outcome).inc()
        if decision.no_bid_reason:
            metrics.NO_BIDS.labels(decision.no_bid_reason).inc()
        for rules in denied.values():
            for rule in rules:
                metrics.POLICY_DENIALS.labels(rule).inc()
