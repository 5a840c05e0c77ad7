"""Tests of the OpenRTB 2.6 adapter (`ad_orchestrator.openrtb`).

Every request under `tests/fixtures/openrtb/requests/` (the OpenRTB 2.6 spec's
examples) and every `prebid-fixtures/*.request.json` (Prebid Server's test data) is
its own test case, named after its file. Prebid fixtures whose original expects HTTP
400 must be rejected with an error naming the field Prebid's message names; all
others must convert.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from ad_orchestrator.errors import ConfigError, RequestValidationError
from ad_orchestrator.openrtb import (
    NBR_CODES,
    bid_request_to_ad_request,
    decision_to_bid_response,
    load_catalogue,
    nbr_code,
)
from ad_orchestrator.schemas import CandidateAd, Decision, NoBidReason
from ad_orchestrator.settings import CONFIG_DIR, load_settings
from policies import build_engine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openrtb"
SPEC_FILES = sorted((FIXTURES / "requests").glob("*.json"))
PREBID_FILES = sorted((FIXTURES / "prebid-fixtures").glob("*.request.json"))
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _name(path: Path) -> str:
    return path.name.removesuffix(".json").removesuffix(".request")


def _original(path: Path) -> dict[str, Any]:
    original = path.parent / "originals" / f"{_name(path)}.fixture.json"
    return json.loads(original.read_text())


def _prebid_rejects(path: Path) -> bool:
    return _original(path).get("expectedReturnCode") == 400


VALID = [p for p in SPEC_FILES] + [p for p in PREBID_FILES if not _prebid_rejects(p)]
REJECTED = [p for p in PREBID_FILES if _prebid_rejects(p)]


def test_fixture_inventory() -> None:
    """All 7 spec examples and 20 Prebid requests are present; 4 Prebid rejects."""
    assert len(SPEC_FILES) == 7
    assert len(PREBID_FILES) == 20
    assert len(REJECTED) == 4


@pytest.mark.parametrize("path", VALID, ids=_name)
def test_valid_request_converts(path: Path) -> None:
    """A valid BidRequest converts, keeping its id, imps, blocklists and time."""
    data = json.loads(path.read_text())
    request = bid_request_to_ad_request(data, now=NOW)
    assert request.request_id == data["id"]
    assert [s.slot_id for s in request.slots] == [imp["id"] for imp in data["imp"]]
    assert request.blocked.bcat == data.get("bcat", [])
    assert request.blocked.badv == data.get("badv", [])
    assert request.timestamp == NOW
    assert {ad.ad_id for ad in request.candidates} == {
        ad.ad_id for ad in load_catalogue()
    }


def _prebid_field(message: str) -> str:
    found = re.search(r"req(?:uest)?\.([A-Za-z_.]+?)(?: is invalid| must)", message)
    assert found is not None, message
    return found[1]


@pytest.mark.parametrize("path", REJECTED, ids=_name)
def test_prebid_rejection_is_matched(path: Path) -> None:
    """What Prebid Server rejects, we reject, naming the same field."""
    expected_field = _prebid_field(_original(path)["expectedErrorMessage"])
    with pytest.raises(RequestValidationError) as caught:
        bid_request_to_ad_request(json.loads(path.read_text()), now=NOW)
    paths = [field for field, _ in caught.value.problems]
    assert any(p == expected_field or p.startswith(expected_field + ".") for p in paths)
    assert expected_field.split(".")[0] in str(caught.value)


def _load(name: str) -> dict[str, Any]:
    folder = "requests" if name.startswith(("spec", "impl")) else "prebid-fixtures"
    suffix = ".json" if folder == "requests" else ".request.json"
    return json.loads((FIXTURES / folder / f"{name}{suffix}").read_text())


def test_25_style_ext_placements_are_read() -> None:
    """regs.ext.gdpr, regs.ext.us_privacy and user.ext.consent fill the 2.6 fields."""
    data = _load("ep_valid_ortb25_to_26_upconvert")
    assert "gdpr" not in data.get("regs", {})
    request = bid_request_to_ad_request(data, now=NOW)
    assert request.privacy.gdpr is True
    assert request.privacy.tcf_consent == data["user"]["ext"]["consent"]
    assert request.privacy.us_privacy == data["regs"]["ext"]["us_privacy"]


def test_26_fields_win_over_ext() -> None:
    """When both placements are present, the 2.6 field is used."""
    data = {
        "id": "r",
        "imp": [{"id": "1"}],
        "regs": {"gdpr": 0, "ext": {"gdpr": 1, "us_privacy": "1YYN"}},
        "user": {"consent": "new", "ext": {"consent": "old"}},
    }
    request = bid_request_to_ad_request(data, now=NOW)
    assert request.privacy.gdpr is False
    assert request.privacy.tcf_consent == "new"
    assert request.privacy.us_privacy == "1YYN"


def test_device_user_and_page_fields() -> None:
    """The mobile-app example maps device, bundle and blocklists."""
    request = bid_request_to_ad_request(_load("spec26_ex3_mobile_app"), now=NOW)
    assert request.device.device_type == 1
    assert request.device.os == "iOS"
    assert request.page.bundle == "12345"
    assert request.page.categories == ["IAB15", "IAB15-10"]
    assert request.slots[0].bidfloor_cpm == 0.5
    assert (request.slots[0].width, request.slots[0].height) == (728, 90)
    assert "apple.com" in request.blocked.badv


def test_empty_ifa_means_no_ifa() -> None:
    """iOS 14+ sends an empty IFA without tracking consent: it is no identifier."""
    request = bid_request_to_ad_request(_load("ep_valid_app_ios14_empty_ifa"), now=NOW)
    assert request.device.ifa is None


def test_coppa_and_geo_from_the_adapter_fixture() -> None:
    """COPPA and an alpha-3 device country come through unchanged."""
    request = bid_request_to_ad_request(
        _load("adp_huaweiads_coppa_app_tcf_consent"), now=NOW
    )
    assert request.privacy.coppa is True
    assert request.geo.country == "CHN"


BASE: dict[str, Any] = {"id": "r1", "imp": [{"id": "1", "banner": {"w": 1, "h": 1}}]}


BAD_FIELDS: list[tuple[dict[str, Any], str, str]] = [
    ({"id": ""}, "id", "non-empty string"),
    ({"id": 7}, "id", "a string"),
    ({"imp": []}, "imp", "at least one impression"),
    ({"imp": "x"}, "imp", "an array of objects"),
    ({"imp": [{"banner": {}}]}, "imp.0.id", "non-empty string"),
    ({"imp": [{"id": "1", "bidfloor": -1}]}, "imp.0.bidfloor", ">= 0"),
    ({"imp": [{"id": "1", "banner": {"w": 0}}]}, "imp.0.banner.w", ">= 1"),
    ({"regs": {"gdpr": 2}}, "regs.gdpr", "either 0 or 1"),
    ({"regs": {"gdpr": True}}, "regs.gdpr", "an integer"),
    ({"regs": {"coppa": 5}}, "regs.coppa", "either 0 or 1"),
    ({"regs": {"ext": "malformed"}}, "regs.ext", "an object"),
    ({"regs": {"ext": {"gdpr": "1"}}}, "regs.ext.gdpr", "an integer"),
    ({"regs": {"gpp_sid": ["2"]}}, "regs.gpp_sid", "array of integers"),
    ({"regs": "x"}, "regs", "an object"),
    ({"user": {"consent": 1}}, "user.consent", "a string"),
    ({"user": {"ext": {"consent": 1}}}, "user.ext.consent", "a string"),
    ({"user": {"yob": 1800}}, "user.yob", "in 1900..2100"),
    ({"user": {"geo": {"accuracy": -1}}}, "user.geo.accuracy", ">= 0"),
    ({"device": {"geo": {"utcoffset": 9999}}}, "device.geo.utcoffset", "-720"),
    ({"device": {"ua": 5}}, "device.ua", "a string"),
    ({"bcat": "IAB25"}, "bcat", "array of strings"),
    ({"badv": [1]}, "badv", "array of strings"),
    ({"tmax": 0}, "tmax", ">= 1"),
]


@pytest.mark.parametrize(
    ("patch", "field", "message"), BAD_FIELDS, ids=[row[1] for row in BAD_FIELDS]
)
def test_bad_fields_are_named(patch: dict[str, Any], field: str, message: str) -> None:
    """Each wrongly typed field is rejected under its own path with what it must be."""
    with pytest.raises(RequestValidationError, match=re.escape(message)) as caught:
        bid_request_to_ad_request({**BASE, **patch}, now=NOW)
    assert field in [path for path, _ in caught.value.problems]


def test_every_problem_is_reported_at_once() -> None:
    """Several bad fields give one error listing each of them."""
    data = {**BASE, "regs": {"gdpr": 2}, "user": {"consent": 1}, "tmax": -5}
    with pytest.raises(RequestValidationError) as caught:
        bid_request_to_ad_request(data, now=NOW)
    assert [p for p, _ in caught.value.problems] == [
        "tmax",
        "regs.gdpr",
        "user.consent",
    ]


def test_not_an_object_is_rejected() -> None:
    """A JSON array or string is no BidRequest."""
    with pytest.raises(RequestValidationError, match="must be a JSON object"):
        bid_request_to_ad_request([BASE])


def test_unknown_fields_are_tolerated() -> None:
    """Fields the service does not read, at any level, are ignored."""
    data = {**BASE, "ext": {"x": 1}, "wseat": ["a"], "regs": {"future": {"a": 1}}}
    assert bid_request_to_ad_request(data, now=NOW).request_id == "r1"


def test_candidates_argument_replaces_the_catalogue() -> None:
    """Candidates given by the caller are the request's candidates."""
    ads = [CandidateAd(ad_id="x", campaign_id="c")]
    request = bid_request_to_ad_request(BASE, candidates=ads, now=NOW)
    assert [ad.ad_id for ad in request.candidates] == ["x"]


# Catalogue -------------------------------------------------------------------------


def test_catalogue_uses_known_campaigns_and_categories() -> None:
    """Every demo creative names a configured campaign and known IAB ids."""
    campaigns = yaml.safe_load((CONFIG_DIR / "campaigns.yaml").read_text())
    ads = load_catalogue(campaigns=campaigns["campaigns"])
    assert len(ads) == 12
    engine = build_engine(load_settings())
    for ad in ads:
        assert set(ad.categories) <= set(engine.taxonomy.names), ad.ad_id
        assert ad.max_cpm == campaigns["campaigns"][ad.campaign_id]["max_cpm"]
    restricted = {
        rule.id
        for ad in ads
        for rule in engine.restricted_of(engine.labels(ad.categories))
    }
    assert {"alcohol", "gambling"} <= restricted


def test_catalogue_with_unknown_campaign_is_refused(tmp_path: Path) -> None:
    """A creative naming a campaign the campaign file lacks is a ConfigError."""
    with pytest.raises(ConfigError, match=r"campaigns \['brewery-spring'"):
        load_catalogue(campaigns={"auto-launch": {"max_cpm": 1.0}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("creatives: []\n", "non-empty `creatives:` list"),
        ("creatives: [{ad_id: a}]\n", r"creatives\.0.*campaign_id"),
        ("creatives: [\n", "cannot be read"),
    ],
    ids=["empty", "missing-campaign", "bad-yaml"],
)
def test_bad_catalogue_is_refused(tmp_path: Path, text: str, message: str) -> None:
    """A broken catalogue file is a ConfigError saying what is wrong."""
    path = tmp_path / "creatives.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_catalogue(path)


# Responses -------------------------------------------------------------------------

AD = CandidateAd(
    ad_id="auto-ev-01",
    campaign_id="auto-launch",
    advertiser_domain="voltmotors.example",
    categories=["1554", "IAB2"],
)


def _decision(**fields: Any) -> Decision:
    return Decision(request_id="r1", **fields)


def test_bid_response_carries_the_bid() -> None:
    """A bid becomes one seatbid with impid, price, adid, crid, adomain and cat."""
    decision = _decision(
        outcome="bid",
        ad_id=AD.ad_id,
        campaign_id=AD.campaign_id,
        slot_id="1",
        bid_cpm=2.5,
        propensity=0.5,
    )
    response = decision_to_bid_response(decision, BASE, {AD.ad_id: AD})
    assert response["id"] == "r1"
    (seat,) = response["seatbid"]
    (bid,) = seat["bid"]
    assert bid["impid"] == "1"
    assert bid["price"] == 2.5
    assert bid["adid"] == bid["crid"] == "auto-ev-01"
    assert bid["adomain"] == ["voltmotors.example"]
    assert (bid["cat"], bid["cattax"]) == (["IAB2"], 1)
    assert "nbr" not in response


def test_bid_response_falls_back_to_the_first_imp() -> None:
    """A decision without a known slot bids on the request's first impression."""
    decision = _decision(outcome="bid", ad_id=AD.ad_id, bid_cpm=1.0)
    response = decision_to_bid_response(decision, BASE, lambda ad_id: AD)
    assert response["seatbid"][0]["bid"][0]["impid"] == "1"


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("bot_traffic", 3),
        ("deadline", 15),
        ("invalid_request", 2),
        ("policy_failed", 1),
        ("policy_denied_all", 0),
        ("budget_exhausted", 0),
    ],
)
def test_no_bid_maps_to_nbr(reason: str, code: int) -> None:
    """A no-bid becomes `{"id", "nbr"}` with our reason kept in ext."""
    response = decision_to_bid_response(
        _decision(outcome="no_bid", no_bid_reason=reason), BASE, {}
    )
    assert response["nbr"] == code
    assert response["ext"]["adorch"]["no_bid_reason"] == reason
    assert "seatbid" not in response


def test_every_no_bid_reason_has_a_code() -> None:
    """The nbr table covers every no-bid reason of the schema."""
    assert set(NBR_CODES) == set(get_args(NoBidReason))
    assert nbr_code(None) == 0


# Through the service ---------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("path", VALID, ids=_name)
def test_valid_request_gets_a_decision_and_a_bid_response(
    celery_worker: Any, path: Path
) -> None:
    """Each valid request is decided by the real worker and answered in OpenRTB."""
    from ad_orchestrator.client import decide

    data = json.loads(path.read_text())
    request = bid_request_to_ad_request(data)

    decision = decide(request, timeout=120)  # the first loads the sentence model
    response = decision_to_bid_response(
        decision, data, {ad.ad_id: ad for ad in request.candidates}
    )

    assert decision.request_id == data["id"]
    assert not decision.fallback
    assert "policy" not in decision.agent_fallbacks
    assert response["id"] == data["id"]
    if decision.outcome == "bid":
        bid = response["seatbid"][0]["bid"][0]
        assert bid["impid"] in [imp["id"] for imp in data["imp"]]
        assert bid["adid"] == decision.ad_id
    else:
        assert response["nbr"] == nbr_code(decision.no_bid_reason)
