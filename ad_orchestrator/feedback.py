"""The feedback log: impressions, clicks and conversions, ordered and idempotent.

Every event is appended to one Redis Stream (ordered by arrival) by a Lua script that
first claims the event id: a second delivery of the same event finds the claim and
changes nothing, so counters are never counted twice. Counters per campaign
(`impressions`, `clicks`, `conversions`, `value_micros`) move in the same script as
the append. An impression also settles the decision's budget reservation at the
price paid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import redis

from ad_orchestrator import metrics
from ad_orchestrator.ledger import MICROS, BudgetLedger
from ad_orchestrator.schemas import FeedbackEvent, parse_feedback
from ad_orchestrator.settings import Settings
from policies.frequency import record_impression

log = logging.getLogger(__name__)

# How long an event id is remembered for de-duplication.
SEEN_TTL_S = 30 * 24 * 3600

_RECORD = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
  'event_id', ARGV[3], 'decision_id', ARGV[4], 'kind', ARGV[5],
  'value', ARGV[6], 'ts', ARGV[7], 'campaign', ARGV[8])
if ARGV[8] ~= '' then
  redis.call('HINCRBY', KEYS[3], ARGV[5] .. 's', 1)
  redis.call('HINCRBY', KEYS[3], ARGV[5] .. '_value_micros', tonumber(ARGV[9]))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording one event did."""

    event_id: str
    duplicate: bool
    settled: float | None = None


class FeedbackLog:
    """Appends feedback events to the stream and moves counters, exactly once."""

    def __init__(self, client: redis.Redis, settings: Settings, ledger: BudgetLedger):
        self.redis = client
        self.settings = settings
        self.ledger = ledger
        self._record = client.register_script(_RECORD)

    def served(self, decision_id: str) -> tuple[str, str, float | None]:
        """Return a decision's campaign, user hash ('' unknown) and bid."""
        campaign, user, bid = cast(
            list[bytes | None],
            self.redis.hmget(
                self.settings.key("decision", decision_id),
                ["campaign", "user", "bid_cpm"],
            ),
        )
        return (
            (campaign or b"").decode(),
            (user or b"").decode(),
            float(bid) if bid else None,
        )

    def record(self, event: FeedbackEvent | dict[str, Any]) -> Recorded:
        """Record one event; a duplicate event id changes nothing."""
        event = parse_feedback(event)
        campaign, user, bid = self.served(event.decision_id)
        # Settling is idempotent (a second settle finds no reservation), so it goes
        # first: a crash between the two steps is repaired by redelivering the event.
        settled = None
        if event.kind == "impression":
            settled = self.ledger.settle(
                event.decision_id, event.value, campaign_id=campaign, bid_cpm=bid
            )
        added = self._record(
            keys=[
                self.settings.key("feedback-seen", event.event_id),
                self.settings.feedback_stream,
                self.settings.key("counters", campaign or "_unknown"),
            ],
            args=[
                SEEN_TTL_S,
                self.settings.feedback_maxlen,
                event.event_id,
                event.decision_id,
                event.kind,
                repr(event.value),
                event.ts.isoformat(),
                campaign,
                round(event.value * MICROS),
            ],
        )
        if not added:
            metrics.FEEDBACK_DUPLICATES.inc()
            log.info("feedback event %s is a duplicate; ignored", event.event_id)
            return Recorded(event.event_id, duplicate=True)
        metrics.FEEDBACK_EVENTS.labels(event.kind).inc()
        if event.kind == "impression" and campaign:
            record_impression(self.redis, self.settings, user or None, campaign)
        return Recorded(event.event_id, duplicate=False, settled=settled)

    def counters(self, campaign_id: str) -> dict[str, int]:
        """Return a campaign's feedback counters."""
        raw = cast(
            dict[bytes, bytes],
            self.redis.hgetall(self.settings.key("counters", campaign_id)),
        )
        return {
            (k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()
        }
