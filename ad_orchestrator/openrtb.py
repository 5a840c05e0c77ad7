"""OpenRTB 2.6 at the edge: BidRequest in, `AdRequest` out; `Decision` to BidResponse.

`bid_request_to_ad_request` validates the fields the service reads with the same
strictness as Prebid Server (a `regs.gdpr` of 2, a consent string that is a number, a
`regs.ext` that is not an object, a negative geo accuracy are all refused) and
tolerates every field it does not read, so requests from newer or older exchanges
pass. Every problem found is reported at once, each under its field path
(`regs.gdpr`), as a `RequestValidationError`.

2.5-style placements are accepted where 2.6 moved a field out of `ext`:
`regs.ext.gdpr`, `regs.ext.us_privacy`, `user.ext.consent` and `user.ext.eids`. A
2.6 field wins when both are present.

A BidRequest carries no candidate ads; they come from the caller or, by default, from
the demo catalogue `config/creatives.yaml` (`load_catalogue`). Raw identifiers and IP
addresses are never copied beyond what `AdRequest` holds: the user id and IFA are
hashed before they reach logs or Redis, and `device.ip` is not read at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ad_orchestrator.errors import ConfigError, RequestValidationError
from ad_orchestrator.schemas import (
    AdRequest,
    CandidateAd,
    Decision,
    NoBidReason,
    parse_model,
    utcnow,
)
from ad_orchestrator.settings import CONFIG_DIR

log = logging.getLogger(__name__)

CATALOGUE_PATH = CONFIG_DIR / "creatives.yaml"
SEAT = "adorch"
CURRENCY = "USD"
MAX_TMAX_MS = 60_000

# Our no-bid reasons as OpenRTB 2.6 No-Bid Reason Codes (list 5.24). Reasons with no
# code of their own map to 0 (unknown); the response's ext names ours exactly.
NBR_CODES: dict[str, int] = {
    "no_candidates": 0,
    "policy_denied_all": 0,
    "budget_exhausted": 0,
    "unknown_campaign": 0,
    "below_floor": 0,
    "policy_failed": 1,  # technical error
    "invalid_request": 2,
    "bot_traffic": 3,  # known web spider (user-agent based detection)
    "deadline": 15,  # insufficient auction time
}

# OpenRTB category taxonomy ids (list "Category Taxonomies", `cattax`).
CATTAX_CONTENT_1 = 1
CATTAX_CONTENT_3 = 7
CATTAX_AD_PRODUCT_2 = 8


# Validation ------------------------------------------------------------------------


@dataclass
class _Checker:
    """Collect every problem of a request before raising, each with its path."""

    problems: list[tuple[str, str]] = field(default_factory=list)

    def bad(self, path: str, expected: str, value: Any) -> None:
        self.problems.append((path, f"must be {expected} (got {value!r:.60})"))

    def obj(self, parent: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
        """Return `parent[key]` if it is an object (absent or null: empty)."""
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(path, "an object", value)
            return {}
        return value

    def string(self, parent: Mapping[str, Any], key: str, path: str) -> str | None:
        value = parent.get(key)
        if value is None or isinstance(value, str):
            return value
        self.bad(path, "a string", value)
        return None

    def integer(
        self,
        parent: Mapping[str, Any],
        key: str,
        path: str,
        *,
        low: int | None = None,
        high: int | None = None,
        choices: tuple[int, ...] | None = None,
    ) -> int | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, "an integer", value)
            return None
        if choices is not None and value not in choices:
            self.bad(path, "either " + " or ".join(map(str, choices)), value)
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                self.bad(path, f"an integer >= {low}", value)
            elif low is None:
                self.bad(path, f"an integer <= {high}", value)
            else:
                self.bad(path, f"an integer in {low}..{high}", value)
            return None
        return value

    def number(
        self, parent: Mapping[str, Any], key: str, path: str, *, low: float = 0.0
    ) -> float | None:
        value = parent.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.bad(path, "a number", value)
            return None
        if value < low:
            self.bad(path, f"a number >= {low:g}", value)
            return None
        return float(value)

    def strings(self, parent: Mapping[str, Any], key: str, path: str) -> list[str]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.bad(path, "an array of strings", value)
            return []
        return value

    def integers(self, parent: Mapping[str, Any], key: str, path: str) -> list[int]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            self.bad(path, "an array of integers", value)
            return []
        return value

    def objects(
        self, parent: Mapping[str, Any], key: str, path: str
    ) -> list[dict[str, Any]]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.bad(path, "an array of objects", value)
            return []
        return value


def _geo(check: _Checker, geo: dict[str, Any], path: str) -> dict[str, Any]:
    check.integer(geo, "accuracy", f"{path}.accuracy", low=0)
    for key in ("lat", "lon"):
        check.number(geo, key, f"{path}.{key}", low=float("-inf"))
    offset = check.integer(geo, "utcoffset", f"{path}.utcoffset", low=-720, high=840)
    return {
        "country": check.string(geo, "country", f"{path}.country"),
        "region": check.string(geo, "region", f"{path}.region"),
        "utcoffset": offset,
    }


def _slots(check: _Checker, data: Mapping[str, Any]) -> list[dict[str, Any]]:
    imps = check.objects(data, "imp", "imp")
    if not imps and "imp" not in data:
        check.problems.append(("imp", "must be a non-empty array of objects"))
    elif not imps and isinstance(data.get("imp"), list):
        check.problems.append(("imp", "must have at least one impression"))
    slots = []
    for index, imp in enumerate(imps):
        path = f"imp.{index}"
        slot_id = check.string(imp, "id", f"{path}.id")
        if not slot_id:
            check.problems.append((f"{path}.id", "must be a non-empty string"))
        floor = check.number(imp, "bidfloor", f"{path}.bidfloor")
        banner = check.obj(imp, "banner", f"{path}.banner")
        video = check.obj(imp, "video", f"{path}.video")
        media = banner or video
        media_path = f"{path}.banner" if banner else f"{path}.video"
        width = check.integer(media, "w", f"{media_path}.w", low=1)
        height = check.integer(media, "h", f"{media_path}.h", low=1)
        formats = check.objects(banner, "format", f"{path}.banner.format")
        if (width is None or height is None) and formats:
            width = check.integer(formats[0], "w", f"{path}.banner.format.0.w", low=1)
            height = check.integer(formats[0], "h", f"{path}.banner.format.0.h", low=1)
        position = check.integer(media, "pos", f"{media_path}.pos", low=0)
        slots.append(
            {
                "slot_id": slot_id or f"imp-{index}",
                "position": position if position is not None else 1,
                # TODO(#4): floors in another currency (bidfloorcur) are read as
                # USD; convert once the service has exchange rates.
                "bidfloor_cpm": floor or 0.0,
                "width": width,
                "height": height,
            }
        )
    return slots


def _privacy(check: _Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    regs = check.obj(data, "regs", "regs")
    regs_ext = check.obj(regs, "ext", "regs.ext")
    user = check.obj(data, "user", "user")
    user_ext = check.obj(user, "ext", "user.ext")
    gdpr = check.integer(regs, "gdpr", "regs.gdpr", choices=(0, 1))
    ext_gdpr = check.integer(regs_ext, "gdpr", "regs.ext.gdpr", choices=(0, 1))
    coppa = check.integer(regs, "coppa", "regs.coppa", choices=(0, 1))
    consent = check.string(user, "consent", "user.consent")
    ext_consent = check.string(user_ext, "consent", "user.ext.consent")
    usp = check.string(regs, "us_privacy", "regs.us_privacy")
    ext_usp = check.string(regs_ext, "us_privacy", "regs.ext.us_privacy")
    check.objects(user, "eids", "user.eids")
    check.objects(user_ext, "eids", "user.ext.eids")
    flag = gdpr if gdpr is not None else ext_gdpr
    return {
        "gdpr": None if flag is None else flag == 1,
        "tcf_consent": consent if consent is not None else ext_consent,
        "us_privacy": usp if usp is not None else ext_usp,
        "gpp": check.string(regs, "gpp", "regs.gpp"),
        "gpp_sid": check.integers(regs, "gpp_sid", "regs.gpp_sid"),
        "coppa": coppa == 1,
    }


def _page(check: _Checker, data: Mapping[str, Any]) -> dict[str, Any]:
    site = check.obj(data, "site", "site")
    app = check.obj(data, "app", "app")
    dooh = check.obj(data, "dooh", "dooh")
    # Both site and app present breaks the spec but is seen in the wild (Prebid
    # adapter fixtures): the site wins, as it describes where the page renders.
    source, name = (site, "site") if site else (app, "app") if app else (dooh, "dooh")
    keywords = check.string(source, "keywords", f"{name}.keywords") or ""
    content = check.obj(source, "content", f"{name}.content")
    categories = [
        *check.strings(source, "cat", f"{name}.cat"),
        *check.strings(source, "pagecat", f"{name}.pagecat"),
        *check.strings(source, "sectioncat", f"{name}.sectioncat"),
        *check.strings(content, "cat", f"{name}.content.cat"),
    ]
    return {
        "domain": check.string(source, "domain", f"{name}.domain"),
        "bundle": check.string(app, "bundle", "app.bundle"),
        "categories": list(dict.fromkeys(categories)),
        "keywords": [word.strip() for word in keywords.split(",") if word.strip()],
    }


def _user_device_geo(
    check: _Checker, data: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    user = check.obj(data, "user", "user")
    device = check.obj(data, "device", "device")
    device_geo = _geo(check, check.obj(device, "geo", "device.geo"), "device.geo")
    user_geo = _geo(check, check.obj(user, "geo", "user.geo"), "user.geo")
    # The device's geo is where the impression happens; the user's is home.
    geo = {k: device_geo.get(k) or user_geo.get(k) for k in device_geo}
    user_id = check.string(user, "id", "user.id") or check.string(
        user, "buyeruid", "user.buyeruid"
    )
    yob = check.integer(user, "yob", "user.yob", low=1900, high=2100)
    features: dict[str, str | float] = {}
    gender = check.string(user, "gender", "user.gender")
    if gender:
        features["gender"] = gender
    ifa = check.string(device, "ifa", "device.ifa")
    return (
        {"id": user_id or None, "yob": yob, "features": features},
        {
            "ua": check.string(device, "ua", "device.ua"),
            "device_type": check.integer(device, "devicetype", "device.devicetype"),
            "os": check.string(device, "os", "device.os"),
            "ifa": ifa or None,  # iOS 14+ without tracking sends ""
            "sua": check.obj(device, "sua", "device.sua") or None,
        },
        geo,
    )


def bid_request_to_ad_request(
    data: Any,
    *,
    candidates: list[CandidateAd] | None = None,
    now: datetime | None = None,
) -> AdRequest:
    """Convert an OpenRTB 2.6 (or 2.5-style) BidRequest to an `AdRequest`.

    Args:
        data: The BidRequest as parsed JSON.
        candidates: The ads that may fill it; the demo catalogue when None.
        now: The request's time (OpenRTB requests carry none); now when None.

    Raises:
        RequestValidationError: a field the service reads has the wrong type or
            value; every problem is listed under its path (`regs.gdpr`).
    """
    if not isinstance(data, dict):
        raise RequestValidationError(
            "BidRequest", [("(root)", f"must be a JSON object (got {data!r:.60})")]
        )
    check = _Checker()
    request_id = check.string(data, "id", "id")
    if not request_id:
        check.problems.append(("id", "must be a non-empty string"))
    tmax = check.integer(data, "tmax", "tmax", low=1)
    slots = _slots(check, data)
    privacy = _privacy(check, data)
    user, device, geo = _user_device_geo(check, data)
    page = _page(check, data)
    blocked = {
        "bcat": check.strings(data, "bcat", "bcat"),
        "badv": check.strings(data, "badv", "badv"),
        "bapp": check.strings(data, "bapp", "bapp"),
    }
    if check.problems:
        raise RequestValidationError("BidRequest", check.problems)
    ads = candidates if candidates is not None else load_catalogue()
    request = {
        "request_id": request_id,
        "timestamp": now or utcnow(),
        "tmax_ms": min(tmax, MAX_TMAX_MS) if tmax else None,
        "user": user,
        "device": device,
        "geo": geo,
        "privacy": privacy,
        "blocked": blocked,
        "page": page,
        "slots": slots,
        "candidates": [ad.model_dump() for ad in ads],
    }
    return parse_model(AdRequest, request, "BidRequest (as AdRequest)")


# Demo catalogue --------------------------------------------------------------------


@lru_cache(maxsize=4)
def _catalogue(path: Path) -> tuple[CandidateAd, ...]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(
            f"creative catalogue {path} cannot be read: {error}"
        ) from None
    items = data.get("creatives") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"creative catalogue {path} must hold a non-empty `creatives:` list"
        )
    ads = []
    for index, item in enumerate(items):
        try:
            ads.append(parse_model(CandidateAd, item, f"creatives.{index}"))
        except RequestValidationError as error:
            raise ConfigError(f"creative catalogue {path}: {error}") from None
    return tuple(ads)


def load_catalogue(
    path: Path = CATALOGUE_PATH, campaigns: Mapping[str, Any] | None = None
) -> list[CandidateAd]:
    """Return the demo creatives (cached per file).

    Args:
        path: The catalogue file.
        campaigns: Known campaigns by id; when given, every creative's campaign
            must be one of them and its `max_cpm` is the campaign's.

    Raises:
        ConfigError: the file is missing or invalid, or names an unknown campaign.
    """
    ads = list(_catalogue(path.resolve()))
    if campaigns is None:
        return ads
    unknown = sorted({ad.campaign_id for ad in ads} - set(campaigns))
    if unknown:
        raise ConfigError(
            f"creative catalogue {path} names campaigns {unknown} that the campaign "
            "file does not define; add them to config/campaigns.yaml"
        )
    priced = []
    for ad in ads:
        cap = _max_cpm(campaigns[ad.campaign_id])
        priced.append(ad.model_copy(update={"max_cpm": cap}) if cap else ad)
    return priced


def _max_cpm(campaign: Any) -> float | None:
    value = (
        campaign.get("max_cpm")
        if isinstance(campaign, Mapping)
        else getattr(campaign, "max_cpm", None)
    )
    return float(value) if value else None


# Responses -------------------------------------------------------------------------


def _categories(ad: CandidateAd) -> tuple[list[str], int | None]:
    """Pick one taxonomy for `bid.cat`: Content 1.0, else Ad Product 2.0, else 3.x."""
    content_1 = [c for c in ad.categories if c.startswith("IAB")]
    if content_1:
        return content_1, CATTAX_CONTENT_1
    ad_product = [c for c in ad.categories if c.isdigit() and int(c) >= 1000]
    if ad_product:
        return ad_product, CATTAX_AD_PRODUCT_2
    if ad.categories:
        return list(ad.categories), CATTAX_CONTENT_3
    return [], None


def nbr_code(reason: NoBidReason | str | None) -> int:
    """Return the OpenRTB no-bid reason code for one of our no-bid reasons."""
    return NBR_CODES.get(reason or "", 0)


def decision_to_bid_response(
    decision: Decision,
    bid_request: Mapping[str, Any],
    ad_lookup: Mapping[str, CandidateAd] | Callable[[str], CandidateAd | None],
) -> dict[str, Any]:
    """Convert a `Decision` to an OpenRTB 2.6 BidResponse.

    Args:
        decision: What the service decided.
        bid_request: The BidRequest it answers (for `id` and the imp ids).
        ad_lookup: Ad id -> the candidate ad (a mapping or a function).

    Returns:
        A BidResponse: one seatbid with one bid, or `{"id": ..., "nbr": code}`
        with our reason in `ext.adorch.no_bid_reason` for a no-bid.
    """
    request_id = str(bid_request.get("id", decision.request_id))
    ad = None
    if decision.outcome == "bid" and decision.ad_id is not None:
        ad = (
            ad_lookup(decision.ad_id)
            if callable(ad_lookup)
            else ad_lookup.get(decision.ad_id)
        )
    if ad is None or decision.bid_cpm is None:
        reason = decision.no_bid_reason or ("no_candidates" if ad is None else None)
        return {
            "id": request_id,
            "nbr": nbr_code(reason),
            "ext": {"adorch": {"no_bid_reason": reason, "rules": decision.rules_fired}},
        }
    imps = [imp for imp in bid_request.get("imp", []) if isinstance(imp, dict)]
    imp_ids = [str(imp.get("id")) for imp in imps]
    impid = decision.slot_id if decision.slot_id in imp_ids else imp_ids[0]
    categories, cattax = _categories(ad)
    bid: dict[str, Any] = {
        "id": decision.decision_id,
        "impid": impid,
        "price": round(decision.bid_cpm, 6),
        "adid": ad.ad_id,
        "crid": ad.ad_id,
        "cid": ad.campaign_id,
        "adomain": [ad.advertiser_domain] if ad.advertiser_domain else [],
        "cat": categories,
        "ext": {
            "adorch": {
                "decision_id": decision.decision_id,
                "propensity": decision.propensity,
                "personalised": decision.personalised,
            }
        },
    }
    if cattax is not None:
        bid["cattax"] = cattax
    if ad.creative is not None and ad.creative.title:
        bid["ext"]["adorch"]["title"] = ad.creative.title
    # TODO(#4): prices are in the campaign files' currency units and are labelled
    # USD; requests asking for another currency (`cur`) get no conversion.
    return {
        "id": request_id,
        "bidid": decision.decision_id,
        "cur": CURRENCY,
        "seatbid": [{"seat": SEAT, "bid": [bid]}],
    }
