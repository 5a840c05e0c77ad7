"""A bot's request gets a no-bid with its reason, end to end on a real worker."""

from __future__ import annotations

from typing import Any

import pytest

from ad_orchestrator.openrtb import (
    bid_request_to_ad_request,
    decision_to_bid_response,
    load_catalogue,
)

pytestmark = pytest.mark.integration

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
    "Gecko) Chrome/124.0 Safari/537.36"
)


def bid_request(rid: str, ua: str) -> dict[str, Any]:
    return {
        "id": rid,
        "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
        "site": {"domain": "news.example"},
        "device": {"ua": ua, "geo": {"country": "USA"}},
        "user": {"id": f"user-{rid}", "yob": 1980},
    }


def test_a_bot_user_agent_gets_a_no_bid_with_reason(celery_worker: object) -> None:
    """Googlebot is refused with `bot_traffic`; the same request from Chrome bids."""
    from ad_orchestrator.client import decide

    ads = [ad for ad in load_catalogue() if ad.campaign_id == "auto-launch"]
    bot, human = bid_request("bot-1", GOOGLEBOT), bid_request("human-1", CHROME)

    decisions = decide(
        [bid_request_to_ad_request(r, candidates=ads) for r in (bot, human)],
        timeout=120,  # a cold worker loads the sentence model for text creatives
    )

    assert [d.outcome for d in decisions] == ["no_bid", "bid"]
    assert decisions[0].no_bid_reason == "bot_traffic"
    response = decision_to_bid_response(decisions[0], bot, {a.ad_id: a for a in ads})
    assert "seatbid" not in response
    assert response["nbr"] == 3  # OpenRTB: known web spider
    assert response["ext"]["adorch"]["no_bid_reason"] == "bot_traffic"
