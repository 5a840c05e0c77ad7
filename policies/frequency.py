"""Frequency caps: how often one (hashed) user has seen a campaign, in Redis.

Each cap of the rule set keeps one counter per user and campaign:
`<prefix>:freq:<cap id>:<user hash>:<campaign id>`. A served impression increments it
inside one MULTI/EXEC transaction: `SET key 0 EX window NX` creates the counter with
its window's expiry only if it does not exist, then `INCR` counts (INCR keeps the
TTL). Both run atomically, so two workers can never leave a counter without a TTL,
which would cap a user forever; and it needs neither Lua nor Redis 7's `EXPIRE NX`.
Windows are fixed: they start at the first impression and end `window_s` later.

Only hashed ids reach Redis (`ad_orchestrator.logging.hash_id`, the same salted
hash the logs use), never raw ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from ad_orchestrator.logging import hash_id
from ad_orchestrator.privacy import HASHED_PREFIX
from ad_orchestrator.schemas import AdRequest
from ad_orchestrator.settings import Settings
from policies.schema import FrequencyCap

log = logging.getLogger(__name__)


def user_hash(settings: Settings, request: AdRequest) -> str | None:
    """Return the salted hash of the request's user (or device) id, if it has one."""
    raw = request.user.id or request.device.ifa
    if not raw:
        return None
    if raw.startswith(HASHED_PREFIX):  # pseudonymised at the edge already
        return raw.removeprefix(HASHED_PREFIX)
    return hash_id(raw, settings.secret("id_salt"))


def cap_key(settings: Settings, cap_id: str, user: str, campaign_id: str) -> str:
    """Return the Redis key of one cap's counter for a user and campaign."""
    return settings.key("freq", cap_id, user, campaign_id)


def caps_reached(
    client: redis.Redis,
    settings: Settings,
    caps: Sequence[FrequencyCap],
    users: Sequence[str | None],
    campaigns: Sequence[Sequence[str]],
) -> list[dict[str, list[str]]]:
    """Return, per request, campaign id -> ids of the caps the user has reached.

    Reads every counter of the batch with one MGET.

    Args:
        client: Redis.
        settings: For key names.
        caps: The rule set's caps.
        users: Per request, the hashed user id (None: no id, nothing capped).
        campaigns: Per request, the campaign ids of its candidates.
    """
    wanted: list[tuple[int, str, FrequencyCap]] = []
    for index, (user, ids) in enumerate(zip(users, campaigns, strict=True)):
        if user is None:
            continue
        for campaign_id in dict.fromkeys(ids):
            wanted.extend(
                (index, campaign_id, cap) for cap in caps if cap.applies_to(campaign_id)
            )
    result: list[dict[str, list[str]]] = [{} for _ in users]
    if not wanted:
        return result
    keys = [
        cap_key(settings, cap.id, users[index] or "", campaign_id)
        for index, campaign_id, cap in wanted
    ]
    values: list[bytes | None] = client.mget(keys)  # type: ignore[assignment]
    for (index, campaign_id, cap), value in zip(wanted, values, strict=True):
        if value is not None and int(value) >= cap.max_impressions:
            result[index].setdefault(campaign_id, []).append(cap.id)
    return result


def record_impression(
    client: redis.Redis,
    settings: Settings,
    user: str | None,
    campaign_id: str,
    caps: Sequence[FrequencyCap] | None = None,
) -> dict[str, int]:
    """Count one served impression of a campaign for a user, under every cap.

    Args:
        client: Redis.
        settings: For key names and, when `caps` is None, the rule files.
        user: The user's hash (`user_hash`); None records nothing.
        campaign_id: The campaign served.
        caps: The caps to count under; None loads them from
            `settings.policies_dir` (cached per folder).

    Returns:
        Cap id -> the count after this impression.
    """
    if user is None:
        return {}
    if caps is None:
        from policies import load_rule_set  # noqa: PLC0415 - avoids an import cycle

        caps = load_rule_set(settings).frequency_caps
    chosen = [cap for cap in caps if cap.applies_to(campaign_id)]
    if not chosen:
        return {}
    pipe = client.pipeline(transaction=True)
    for cap in chosen:
        key = cap_key(settings, cap.id, user, campaign_id)
        pipe.set(key, 0, ex=cap.window_s, nx=True)
        pipe.incr(key)
    replies = pipe.execute()
    counts = replies[1::2]
    return {cap.id: int(count) for cap, count in zip(chosen, counts, strict=True)}
