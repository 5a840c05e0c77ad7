"""Requests and ads shared by the policy tests (a helper module, not tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ad_orchestrator.schemas import AdRequest

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

ALCOHOL_AD = {
    "ad_id": "beer-1",
    "campaign_id": "brewery-spring",
    "advertiser_domain": "brewery.example",
    "categories": ["1004"],
}
GAMBLING_AD = {
    "ad_id": "casino-1",
    "campaign_id": "casino-royal",
    "advertiser_domain": "casino.example",
    "categories": ["1362"],
}
PLAIN_AD = {
    "ad_id": "car-1",
    "campaign_id": "auto-launch",
    "advertiser_domain": "cars.example",
    "categories": ["1554"],
}

# A TC string (from the go-iabtcf vectors) consenting purposes 1-10 and vendor 423,
# which is the vendor id of the shipped consent rules.
TCF_CONSENT_423 = (
    "COzcJxTOzcJxTBcAAAENAiCMAP_AAAAAAAAADTwAQDTgAAAA.IF5EX2S5OI2tho2YdF7BEYYwfJxyigM"
    "gShgQIsS8NwIeFbBoGPmAAHBG4JAQAGBAkkACBAQIsHGBcCQABgIgRiRCMQEGMjzNKBJBAggkbI0FAC"
    "CVmnkHS3ZCY70-6u__bA"
)
# Purposes 2 and 10 only, no vendors (iabtcf-java vector).
TCF_NO_CONSENT = "COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"


def make_request(
    *,
    ads: list[dict[str, Any]] | None = None,
    yob: int | None = None,
    country: str | None = None,
    request_id: str = "r1",
    **sections: Any,
) -> AdRequest:
    """Build a valid request; keyword sections (privacy, blocked...) are merged in."""
    data: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": NOW.isoformat(),
        "user": {"id": "user-42", "yob": yob},
        "geo": {"country": country},
        "slots": [{"slot_id": "s1"}],
        "candidates": ads or [PLAIN_AD, ALCOHOL_AD, GAMBLING_AD],
    }
    data.update(sections)
    return AdRequest.model_validate(data)
