"""Each campaign's pacing state in Redis, shared by every worker.

A campaign's flight (or its UTC day) is cut into `slots` equal time slots. The state
per campaign is one hash, `pacing:<campaign>`: the current slot, the bid multiplier,
and counters (spend, wins, auctions) at the start of the slot and for the last one.
When a request arrives in a later slot than the stored one, the worker that sees it
first computes the new multiplier (from the pacing policy and the last slot's
figures) and moves the state forward in one Lua script that checks the slot it read
is still current: exactly one transition per slot, whoever serves the campaign.

Auctions are counted per batch; spend comes from the budget ledger and wins from
the feedback counters, so the state needs no extra write on the hot path besides
one HINCRBY per campaign and batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import redis

from ad_orchestrator.settings import Settings

FIELDS = (
    "slot", "multiplier", "spent_at", "wins_at", "auctions_at",
    "last_spend", "last_wins", "last_auctions", "auctions",
)  # fmt: skip

# KEYS: pacing hash. ARGV: slot read, new slot, new multiplier, spent now (micros),
# wins now, auctions now. Moves the slot forward only if it is still the one read.
_ADVANCE = """
local slot = tonumber(redis.call('HGET', KEYS[1], 'slot') or '-1')
if slot ~= tonumber(ARGV[1]) then return 0 end
local spent_at = tonumber(redis.call('HGET', KEYS[1], 'spent_at') or ARGV[4])
local wins_at = tonumber(redis.call('HGET', KEYS[1], 'wins_at') or ARGV[5])
local auctions_at = tonumber(redis.call('HGET', KEYS[1], 'auctions_at') or ARGV[6])
redis.call('HSET', KEYS[1],
  'slot', ARGV[2], 'multiplier', ARGV[3],
  'last_spend', tonumber(ARGV[4]) - spent_at,
  'last_wins', tonumber(ARGV[5]) - wins_at,
  'last_auctions', tonumber(ARGV[6]) - auctions_at,
  'spent_at', ARGV[4], 'wins_at', ARGV[5], 'auctions_at', ARGV[6])
return 1
"""


@dataclass(frozen=True, slots=True)
class PacingState:
    """One campaign's pacing state as read from Redis.

    `*_at` are the running totals when the current slot started; `auctions` is the
    running total of auctions the campaign bid in.
    """

    slot: int
    multiplier: float
    spent_at_micros: int | None
    wins_at: int | None
    auctions_at: int | None
    auctions: int


def _number(values: dict[str, bytes | None], name: str) -> float | None:
    value = values[name]
    return float(value) if value is not None else None


class PacingStore:
    """Reads and advances the campaigns' pacing state."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._advance = client.register_script(_ADVANCE)

    def key(self, campaign_id: str) -> str:
        """Return the Redis key of a campaign's pacing hash."""
        return self.settings.key("pacing", campaign_id)

    def read(self, campaign_ids: Iterable[str]) -> dict[str, PacingState]:
        """Read several campaigns' state in one round trip (defaults if new)."""
        ids = list(dict.fromkeys(campaign_ids))
        pipe = self.redis.pipeline(transaction=False)
        for campaign_id in ids:
            pipe.hmget(self.key(campaign_id), list(FIELDS))
        found = {}
        for campaign_id, raw in zip(ids, pipe.execute(), strict=True):
            values = dict(zip(FIELDS, cast(list[bytes | None], raw), strict=True))
            slot = _number(values, "slot")
            multiplier = _number(values, "multiplier")
            spent_at = _number(values, "spent_at")
            wins_at = _number(values, "wins_at")
            auctions_at = _number(values, "auctions_at")
            found[campaign_id] = PacingState(
                slot=-1 if slot is None else int(slot),
                multiplier=1.0 if multiplier is None else multiplier,
                spent_at_micros=None if spent_at is None else int(spent_at),
                wins_at=None if wins_at is None else int(wins_at),
                auctions_at=None if auctions_at is None else int(auctions_at),
                auctions=int(_number(values, "auctions") or 0),
            )
        return found

    def count_auctions(self, counts: dict[str, int]) -> None:
        """Add the auctions each campaign bid in (one batch) to its counter."""
        if not counts:
            return
        pipe = self.redis.pipeline(transaction=False)
        for campaign_id, count in counts.items():
            pipe.hincrby(self.key(campaign_id), "auctions", count)
        pipe.execute()

    def advance(
        self,
        campaign_id: str,
        *,
        read_slot: int,
        new_slot: int,
        multiplier: float,
        spent_micros: int,
        wins: int,
        auctions: int,
    ) -> bool:
        """Move a campaign into `new_slot` with `multiplier`, if still at `read_slot`.

        Returns:
            Whether this call made the transition (False: another worker did).
        """
        moved = self._advance(
            keys=[self.key(campaign_id)],
            args=[read_slot, new_slot, repr(multiplier), spent_micros, wins, auctions],
        )
        return bool(moved)

    def reset(self, campaign_ids: Iterable[str]) -> None:
        """Forget the pacing state of these campaigns (replays, tests)."""
        keys = [self.key(c) for c in campaign_ids]
        if keys:
            self.redis.delete(*keys)
