"""Policy end to end: OpenRTB requests through a real worker, decided by the chord.

Requests go through the OpenRTB adapter and `gather_results` on the session's real
worker (real broker, real result backend, all four agents). Each case sends a batch
of requests, each with its own user id so frequency caps never interfere, because
the reducer explores: one lucky decision would prove nothing about "never".
"""

from __future__ import annotations

from typing import Any

import pytest

from ad_orchestrator.openrtb import bid_request_to_ad_request, load_catalogue
from ad_orchestrator.schemas import Decision, utcnow
from ad_orchestrator.settings import load_settings
from policies import build_engine

pytestmark = pytest.mark.integration

BATCH = 24
ALCOHOL = {"brew-lager-01", "brew-wine-02"}
TIMEOUT_S = 120  # the first batch loads the Content agent's sentence model


def _restricted_ads() -> set[str]:
    engine = build_engine(load_settings())
    return {
        ad.ad_id
        for ad in load_catalogue()
        if engine.restricted_of(engine.labels(ad.categories))
    }


def bid_request(rid: str, country: str, age: int, **extra: Any) -> dict[str, Any]:
    """An OpenRTB 2.6 request from a user of `age` (by yob) in `country`."""
    return {
        "id": rid,
        "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
        "site": {"domain": "news.example", "page": "https://news.example/a"},
        "device": {
            "ua": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/124.0 Safari/537.36",
            "geo": {"country": country},
        },
        # yob = this year - age - 1 keeps the youngest possible age at `age`.
        "user": {"id": f"user-{rid}", "yob": utcnow().year - age - 1},
        **extra,
    }


def decide_all(
    requests: list[dict[str, Any]], only: set[str] | None = None
) -> list[Decision]:
    from ad_orchestrator.app import gather_results

    ads = [ad for ad in load_catalogue() if only is None or ad.ad_id in only]
    batch = [
        bid_request_to_ad_request(r, candidates=ads).model_dump(mode="json")
        for r in requests
    ]
    decisions: list[Decision] = gather_results.delay(batch).get(timeout=TIMEOUT_S)
    assert [d.request_id for d in decisions] == [r["id"] for r in requests]
    assert all("policy" not in d.agent_fallbacks for d in decisions)
    return decisions


def test_us_19_never_gets_alcohol(celery_worker: Any) -> None:
    """A 19-year-old in the US never gets an alcohol ad; the age rule says why."""
    decisions = decide_all([bid_request(f"us-{i}", "USA", 19) for i in range(BATCH)])

    assert not {d.ad_id for d in decisions} & ALCOHOL
    assert all("age.alcohol" in d.rules_fired for d in decisions)
    assert any(d.outcome == "bid" for d in decisions)


def test_us_19_with_only_alcohol_gets_no_bid(celery_worker: Any) -> None:
    """With nothing but alcohol on offer, the US 19-year-old gets a policy no-bid."""
    decisions = decide_all([bid_request("us-only", "US", 19)], only=ALCOHOL)

    assert decisions[0].outcome == "no_bid"
    assert decisions[0].no_bid_reason == "policy_denied_all"


def test_uk_19_may_get_alcohol(celery_worker: Any) -> None:
    """The same user in the UK (drinking age 18) may be shown the alcohol ad."""
    decisions = decide_all(
        [bid_request(f"uk-{i}", "GBR", 19) for i in range(4)], only=ALCOHOL
    )

    assert all(d.outcome == "bid" and d.ad_id in ALCOHOL for d in decisions)
    assert all("age.alcohol" not in d.rules_fired for d in decisions)


def test_coppa_gets_only_unrestricted_contextual_ads(celery_worker: Any) -> None:
    """COPPA: no age-restricted category, no personalisation, even for an adult yob."""
    restricted = _restricted_ads()
    requests = [
        bid_request(f"coppa-{i}", "USA", 40, regs={"coppa": 1}) for i in range(BATCH)
    ]
    decisions = decide_all(requests)

    assert restricted >= ALCOHOL
    assert not {d.ad_id for d in decisions} & restricted
    assert all(d.personalised is False for d in decisions)
    assert all("consent.coppa" in d.rules_fired for d in decisions)
    assert any(d.outcome == "bid" for d in decisions)


def test_bcat_blocks_the_creatives_category(celery_worker: Any) -> None:
    """bcat with the lager's category (IAB8-5) never gets the lager, even for adults."""
    requests = [
        bid_request(f"bcat-{i}", "GBR", 30, bcat=["IAB8-5"]) for i in range(BATCH)
    ]
    decisions = decide_all(requests)

    assert "brew-lager-01" not in {d.ad_id for d in decisions}
    assert all("block.bcat" in d.rules_fired for d in decisions)
