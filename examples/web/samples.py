"""Example requests for the web backend: what a caller posts to `/decide`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

DESKTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36"
)


def sample_ad_request(tmax_ms: int | None = None) -> dict[str, Any]:
    """Return a valid `AdRequest` as JSON data, with a fresh request id.

    Two demo campaigns from `config/campaigns.yaml` compete for one banner slot
    on a travel page; no user id and no consent string, so the decision is
    contextual.
    """
    request: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).isoformat(),
        "device": {"ua": DESKTOP_UA, "device_type": 2},
        "geo": {"country": "DE", "utcoffset": 60},
        "page": {
            "domain": "travel.example",
            "categories": ["IAB20"],
            "keywords": ["city break", "hotels"],
        },
        "slots": [{"slot_id": "top", "position": 1, "width": 728, "height": 90}],
        "candidates": [
            {
                "ad_id": "travel-deals-1",
                "campaign_id": "travel-deals",
                "advertiser_domain": "deals.example",
                "categories": ["IAB20"],
                "creative": {
                    "title": "Weekend city breaks",
                    "body": "Hotels and flights in one booking, cancel for free.",
                },
                "max_cpm": 3.0,
            },
            {
                "ad_id": "auto-launch-1",
                "campaign_id": "auto-launch",
                "advertiser_domain": "cars.example",
                "categories": ["IAB2"],
                "creative": {
                    "title": "The new hatchback",
                    "body": "Book a test drive at a dealer near you.",
                },
                "max_cpm": 5.0,
            },
        ],
    }
    if tmax_ms is not None:
        request["tmax_ms"] = tmax_ms
    return request
