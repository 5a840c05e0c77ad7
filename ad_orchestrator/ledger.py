"""Campaign budgets in Redis: reserve at decision time, settle or release later.

Money is kept in integer micro-units (1 currency unit = 1,000,000), so sums are
exact. A decision reserves its bid's cost (the ceiling of what the impression can
cost) in one Lua script that refuses when spent + reserved + cost would pass the
budget; concurrent workers therefore can never overspend at all, let alone by more
than one bid. The impression event settles the reservation at the price actually paid;
a reservation that sees no impression within the window is released by
`release_expired`.

Keys (under the settings prefix):
    budget:<campaign>      hash: budget, spent, reserved (micros)
    resv:<decision id>     hash: campaign, amount (micros); kept a day past due
    resv-due               sorted set: decision id by the time it falls due
    settled:<decision id>  marker: this decision was charged (30 days)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ad_orchestrator.errors import BudgetError, ConfigError
from ad_orchestrator.settings import Settings

MICROS = 1_000_000
# How long a charged decision is remembered, so it is never charged twice.
SETTLED_TTL_S = 30 * 24 * 3600
# A reservation's record outlives its window by this much: the window's release
# needs it, and it must never vanish first (its money would stay reserved forever).
RESERVATION_GRACE_S = 24 * 3600

_RESERVE = """
local budget = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
redis.call('HSETNX', KEYS[1], 'budget', budget)
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if spent + reserved + amount > budget then return 0 end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('HSET', KEYS[2], 'campaign', ARGV[3], 'amount', amount)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]), ARGV[6])
return 1
"""

# KEYS: resv key, due set, campaign key (found by the caller from the reservation).
# KEYS: resv key, due set, campaign key, settled marker. ARGV: price, decision id,
# the bid's cost (-1: unknown), marker TTL. A decision is charged at most once; an
# impression after its reservation was released is still charged (money was spent).
_SETTLE = """
if redis.call('SET', KEYS[4], '1', 'NX', 'EX', tonumber(ARGV[4])) == false then
  return -1
end
local price = tonumber(ARGV[1])
local amount = tonumber(redis.call('HGET', KEYS[1], 'amount') or '-1')
if amount >= 0 then
  price = math.min(price, amount)
  redis.call('HINCRBY', KEYS[3], 'reserved', -amount)
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[2])
elseif tonumber(ARGV[3]) >= 0 then
  price = math.min(price, tonumber(ARGV[3]))
else
  redis.call('DEL', KEYS[4])
  return -2
end
redis.call('HINCRBY', KEYS[3], 'spent', price)
return price
"""

_RELEASE = """
local amount = tonumber(redis.call('HGET', KEYS[1], 'amount') or '-1')
redis.call('ZREM', KEYS[2], ARGV[1])
if amount < 0 then return 0 end
redis.call('HINCRBY', KEYS[3], 'reserved', -amount)
redis.call('DEL', KEYS[1])
return amount
"""


class Campaign(BaseModel):
    """One campaign's money: its budget and how it bids."""

    model_config = ConfigDict(extra="forbid")
    budget: float = Field(gt=0, description="Budget in currency units.")
    base_cpm: float = Field(gt=0, description="Bid per mille before pacing.")
    max_cpm: float = Field(gt=0, description="Highest bid per mille ever placed.")
    flight_start: datetime | None = Field(
        default=None, description="Start of the paced flight; unset: daily budget."
    )
    flight_end: datetime | None = None

    def planned_fraction(self, at: datetime) -> float:
        """Fraction of the budget an even plan has spent by `at` (0 to 1).

        With a flight, the plan is linear over it; without one the budget is daily
        and the plan is linear over the UTC day of `at`.
        """
        if self.flight_start is not None and self.flight_end is not None:
            start, end = self.flight_start, self.flight_end
        else:
            start = at.astimezone(UTC).replace(
                hour=0, minute=0, second=0, microsecond=0
            )
            end = start + timedelta(days=1)
        span = (end - start).total_seconds()
        return min(max((at - start).total_seconds() / span, 0.0), 1.0)


def load_campaigns(path: Path) -> dict[str, Campaign]:
    """Read `config/campaigns.yaml`; a bad file raises `ConfigError` naming it."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return {
            str(name): Campaign.model_validate(spec)
            for name, spec in (raw.get("campaigns") or {}).items()
        }
    except (OSError, yaml.YAMLError, ValidationError, AttributeError) as error:
        raise ConfigError(f"invalid campaigns file {path}: {error}") from None


def to_micros(amount: float) -> int:
    """Convert currency units to integer micro-units."""
    return round(amount * MICROS)


def cpm_cost_micros(cpm: float) -> int:
    """Return what one impression costs at a CPM price, in micro-units."""
    return round(cpm * MICROS / 1000)


@dataclass(frozen=True, slots=True)
class CampaignState:
    """Where one campaign's money stands, in currency units."""

    budget: float
    spent: float
    reserved: float

    @property
    def remaining(self) -> float:
        """Budget not yet spent or reserved."""
        return self.budget - self.spent - self.reserved


def _text(raw: object) -> str:
    """Return a Redis reply (bytes, str or None) as text ('' for None)."""
    if isinstance(raw, bytes):
        return raw.decode()
    return "" if raw is None else str(raw)


class BudgetLedger:
    """Atomic budget bookkeeping for every campaign, shared by all workers."""

    def __init__(
        self, client: redis.Redis, settings: Settings, campaigns: dict[str, Campaign]
    ) -> None:
        self.redis = client
        self.settings = settings
        self.campaigns = campaigns
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._due_key = settings.key("resv-due")

    def _campaign_key(self, campaign_id: str) -> str:
        return self.settings.key("budget", campaign_id)

    def _resv_key(self, decision_id: str) -> str:
        return self.settings.key("resv", decision_id)

    def campaign(self, campaign_id: str) -> Campaign:
        """Return a campaign's configuration, or raise naming the unknown id."""
        try:
            return self.campaigns[campaign_id]
        except KeyError:
            raise BudgetError(
                f"campaign {campaign_id!r} is not in the campaigns file; "
                f"known: {sorted(self.campaigns)}"
            ) from None

    def states(self, campaign_ids: Iterable[str]) -> dict[str, CampaignState]:
        """Read several campaigns' money in one round trip."""
        ids = list(dict.fromkeys(campaign_ids))
        pipe = self.redis.pipeline(transaction=False)
        for campaign_id in ids:
            pipe.hmget(self._campaign_key(campaign_id), ["spent", "reserved"])
        found = {}
        for campaign_id, (spent, reserved) in zip(ids, pipe.execute(), strict=True):
            found[campaign_id] = CampaignState(
                budget=self.campaign(campaign_id).budget,
                spent=int(spent or 0) / MICROS,
                reserved=int(reserved or 0) / MICROS,
            )
        return found

    def reserve(
        self,
        campaign_id: str,
        decision_id: str,
        bid_cpm: float,
        now: float | None = None,
    ) -> bool:
        """Reserve one impression's cost at `bid_cpm`; False when budget is short."""
        if bid_cpm <= 0:
            raise BudgetError(f"bid_cpm must be positive, but got {bid_cpm}")
        window = self.settings.reservation_window_s
        due = (now if now is not None else time.time()) + window
        answer = self._reserve(
            keys=[self._campaign_key(campaign_id), self._resv_key(decision_id),
                  self._due_key],
            args=[to_micros(self.campaign(campaign_id).budget),
                  cpm_cost_micros(bid_cpm), campaign_id, due,
                  window + RESERVATION_GRACE_S,
                  decision_id],
        )  # fmt: skip
        if answer == -1:
            raise BudgetError(f"decision {decision_id!r} already holds a reservation")
        return bool(answer)

    def settle(
        self,
        decision_id: str,
        price_cpm: float,
        *,
        campaign_id: str | None = None,
        bid_cpm: float | None = None,
    ) -> float | None:
        """Charge a decision's impression at the price paid (capped at the bid).

        With an open reservation, the reservation becomes spend. An impression that
        arrives after its reservation was released is still charged, to
        `campaign_id` and capped at `bid_cpm` (the caller's record of the decision).

        Returns:
            The amount spent in currency units, or None when nothing was charged:
            the decision was already charged (settling twice changes nothing) or
            nothing is known about it.
        """
        campaign = _text(self.redis.hget(self._resv_key(decision_id), "campaign"))
        campaign = campaign or campaign_id or ""
        if not campaign:
            return None
        cap = cpm_cost_micros(bid_cpm) if bid_cpm is not None else -1
        spent = self._settle(
            keys=[self._resv_key(decision_id), self._due_key,
                  self._campaign_key(campaign),
                  self.settings.key("settled", decision_id)],
            args=[cpm_cost_micros(price_cpm), decision_id, cap, SETTLED_TTL_S],
        )  # fmt: skip
        return None if spent < 0 else int(spent) / MICROS

    def release_expired(self, now: float | None = None) -> int:
        """Release reservations whose window passed with no impression; count them."""
        due = cast(
            list[bytes],
            self.redis.zrangebyscore(
                self._due_key, "-inf", now if now is not None else time.time()
            ),
        )
        released = 0
        for raw in due:
            decision_id = _text(raw)
            campaign = _text(self.redis.hget(self._resv_key(decision_id), "campaign"))
            keys = [self._resv_key(decision_id), self._due_key,
                    self._campaign_key(campaign or "_gone")]  # fmt: skip
            released += int(self._release(keys=keys, args=[decision_id]) > 0)
        return released

    def reset(self, campaign_ids: Sequence[str]) -> None:
        """Forget the spend and reservations of these campaigns (replays, tests)."""
        self.redis.delete(*(self._campaign_key(c) for c in campaign_ids))
