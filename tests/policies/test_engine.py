"""Tests of the rule engine in `policies.engine` with the shipped rule files."""

from __future__ import annotations

from typing import Any

import pytest
from _policy_requests import (
    ALCOHOL_AD,
    GAMBLING_AD,
    PLAIN_AD,
    TCF_CONSENT_423,
    TCF_NO_CONSENT,
    make_request,
)

from ad_orchestrator.schemas import ContentOutput, ContextOutput, TopicScore
from ad_orchestrator.settings import load_settings
from policies import PolicyEngine, build_engine
from policies.engine import age_at

# GPP with a TCF EU section (no purposes 1/3/4) and US Privacy 1NYN (opted out).
GPP_USP_OPT_OUT = "DBACNYA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1NYN"
# GPP with only a TCF EU section: the TC string that consents for vendor 423.
GPP_TCF_423 = "DBABMA~" + TCF_CONSENT_423


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return build_engine(load_settings())


def test_obd_style_request_allows_everything(engine: PolicyEngine) -> None:
    """No restricted ads and no privacy signals: all allowed, personalised."""
    request = make_request(ads=[PLAIN_AD])
    out = engine.evaluate(request).to_output()
    assert out.allowed == ["car-1"]
    assert out.denied == {}
    assert out.personalised is True
    assert out.rules_fired == []
    assert out.no_ad_reason is None


@pytest.mark.parametrize(
    ("country", "yob", "alcohol_allowed", "rule"),
    [
        ("US", 2026 - 19, False, "age.alcohol"),
        ("USA", 2026 - 19, False, "age.alcohol"),
        ("us", 2026 - 22, True, None),
        ("GB", 2026 - 19, True, None),
        ("GBR", 2026 - 18, False, "age.alcohol"),
        ("DE", None, False, "age.alcohol.unknown"),
        (None, None, False, "age.alcohol.unknown"),
        ("SA", 2026 - 40, False, "country.alcohol"),
        ("JP", 2026 - 20, False, "age.alcohol"),
    ],
    ids=[
        "us-19",
        "usa-19",
        "us-22",
        "gb-19",
        "gbr-18",
        "de-unknown",
        "none",
        "sa-banned",
        "jp-20",
    ],
)
def test_alcohol_age_by_country(
    engine: PolicyEngine,
    country: str | None,
    yob: int | None,
    alcohol_allowed: bool,
    rule: str | None,
) -> None:
    """Alcohol needs 21+ in the US, 18+ by default; unknown age is denied."""
    out = engine.evaluate(make_request(country=country, yob=yob)).to_output()
    assert ("beer-1" in out.allowed) is alcohol_allowed
    assert "car-1" in out.allowed
    if rule is not None:
        assert out.denied["beer-1"] == [rule]
        assert rule in out.rules_fired


def test_age_is_the_youngest_possible() -> None:
    """With only the birth year known, the age is the lower bound (birthday unknown)."""
    request = make_request(yob=2000)
    assert age_at(2000, request) == 2026 - 2000 - 1
    assert age_at(None, request) is None
    assert age_at(2030, request) is None


@pytest.mark.parametrize(
    ("blocked", "denied_ad", "rule"),
    [
        ({"bcat": ["1004"]}, "beer-1", "block.bcat"),
        ({"bcat": ["1002"]}, "beer-1", "block.bcat"),  # parent blocks child
        ({"bcat": ["IAB8-5"]}, None, None),  # maps to 1006 Spirits, not beer
        ({"bcat": ["1361"]}, "casino-1", "block.bcat"),
        ({"badv": ["cars.example"]}, "car-1", "block.badv"),
        ({"badv": ["example"]}, "car-1", "block.badv"),  # parent domain
        ({"badv": ["ars.example"]}, None, None),  # not a suffix on a dot
    ],
    ids=[
        "bcat-exact",
        "bcat-parent",
        "bcat-content1-mapped",
        "bcat-gambling",
        "badv-exact",
        "badv-parent-domain",
        "badv-partial-name",
    ],
)
def test_request_blocklists(
    engine: PolicyEngine,
    blocked: dict[str, Any],
    denied_ad: str | None,
    rule: str | None,
) -> None:
    """bcat (with descendants and mapped ids) and badv (with subdomains) deny ads."""
    request = make_request(country="GB", yob=1980, blocked=blocked)
    out = engine.evaluate(request).to_output()
    if denied_ad is None:
        assert out.denied == {}
    else:
        assert out.denied[denied_ad] == [rule]
        assert denied_ad not in out.allowed


def test_content1_bcat_reaches_ad_product_labels(engine: PolicyEngine) -> None:
    """A Content 1.0 code in bcat blocks an ad labelled with its Ad Product 2.0 id."""
    spirits = {**ALCOHOL_AD, "ad_id": "gin-1", "categories": ["1006"]}
    request = make_request(
        ads=[PLAIN_AD, spirits], country="GB", yob=1980, blocked={"bcat": ["IAB8-5"]}
    )
    assert engine.evaluate(request).to_output().denied == {"gin-1": ["block.bcat"]}


def test_bapp_blocks_the_promoted_app(engine: PolicyEngine) -> None:
    """An ad promoting an app in bapp is denied."""
    game = {**PLAIN_AD, "ad_id": "game-1", "features": {"app_bundle": "com.game"}}
    request = make_request(ads=[PLAIN_AD, game], blocked={"bapp": ["com.game"]})
    assert engine.evaluate(request).to_output().denied == {"game-1": ["block.bapp"]}


def test_coppa_denies_restricted_and_personalisation(engine: PolicyEngine) -> None:
    """COPPA: no restricted category even for an adult yob, and no personalisation."""
    request = make_request(country="US", yob=1970, privacy={"coppa": True})
    out = engine.evaluate(request).to_output()
    assert out.allowed == ["car-1"]
    assert out.denied == {"beer-1": ["coppa.alcohol"], "casino-1": ["coppa.gambling"]}
    assert out.personalised is False
    assert "consent.coppa" in out.rules_fired


@pytest.mark.parametrize(
    ("privacy", "country", "personalised", "rule"),
    [
        ({}, None, True, None),
        ({}, "US", True, None),
        ({}, "FR", False, "consent.gdpr.missing"),  # GDPR by country
        ({"gdpr": False}, "FR", True, None),
        ({"gdpr": True}, None, False, "consent.gdpr.missing"),
        ({"gdpr": True, "tcf_consent": TCF_CONSENT_423}, None, True, None),
        (
            {"gdpr": True, "tcf_consent": TCF_NO_CONSENT},
            None,
            False,
            "consent.gdpr.purposes",
        ),
        (
            {"gdpr": True, "tcf_consent": "Invalid"},
            None,
            False,
            "consent.gdpr.undecodable",
        ),
        (
            {"gdpr": True, "tcf_consent": "BONMj34ONMj34ABACDENALqAAAAAplY"},
            None,
            False,
            "consent.gdpr.unsupported_version",
        ),
        ({"us_privacy": "1YYN"}, "US", False, "consent.us_privacy.opt_out"),
        ({"us_privacy": "1YNN"}, "US", True, None),
        ({"us_privacy": "1---"}, "US", True, None),
        ({"us_privacy": "bogus"}, "US", False, "consent.us_privacy.invalid"),
        ({"gpp": "not-gpp"}, "US", False, "consent.gpp.invalid"),
        ({"gpp": GPP_USP_OPT_OUT}, "US", False, "consent.gpp.opt_out"),
        (
            {"gpp": GPP_USP_OPT_OUT, "gpp_sid": [2]},
            "US",
            False,
            "consent.gdpr.purposes",
        ),
        ({"gpp": GPP_USP_OPT_OUT, "gpp_sid": [6]}, "US", False, "consent.gpp.opt_out"),
        ({"gpp": GPP_TCF_423, "gpp_sid": [2]}, None, True, None),
        (
            {"gpp": GPP_TCF_423, "gpp_sid": [2], "tcf_consent": TCF_NO_CONSENT},
            None,
            False,
            "consent.gdpr.purposes",
        ),
    ],
    ids=[
        "none",
        "us-none",
        "fr-no-flag",
        "fr-gdpr-0",
        "gdpr-no-string",
        "gdpr-consent",
        "gdpr-no-purposes",
        "gdpr-undecodable",
        "gdpr-tcf-v1",
        "usp-opt-out",
        "usp-no-opt-out",
        "usp-na",
        "usp-invalid",
        "gpp-invalid",
        "gpp-usp-opt-out",
        "gpp-sid-2-only",
        "gpp-sid-6",
        "gpp-tcf-section",
        "user-consent-wins-over-gpp",
    ],
)
def test_consent_decides_personalisation(
    engine: PolicyEngine,
    privacy: dict[str, Any],
    country: str | None,
    personalised: bool,
    rule: str | None,
) -> None:
    """Personalised only with the consent each regime needs; ads stay allowed."""
    request = make_request(ads=[PLAIN_AD], country=country, privacy=privacy)
    out = engine.evaluate(request).to_output()
    assert out.personalised is personalised
    assert out.allowed == ["car-1"]
    if rule is not None:
        assert rule in out.rules_fired


def test_content_topics_catch_undeclared_alcohol(engine: PolicyEngine) -> None:
    """An ad Content tags as alcoholic beverages (3.1 id 211) is age-restricted."""
    sneaky = {**PLAIN_AD, "ad_id": "sneaky", "categories": []}
    request = make_request(ads=[PLAIN_AD, sneaky], country="US", yob=2026 - 19)
    content = ContentOutput(
        request_id="r1",
        relevance={"car-1": 0.0, "sneaky": 0.0},
        topics={"sneaky": [TopicScore(category="211", score=0.8)]},
    )
    weak = content.model_copy(
        update={"topics": {"sneaky": [TopicScore(category="211", score=0.2)]}}
    )
    assert engine.evaluate(request, content=content).to_output().denied == {
        "sneaky": ["age.alcohol"]
    }
    assert engine.evaluate(request, content=weak).to_output().denied == {}


def test_context_country_and_age_used_when_request_lacks_them(
    engine: PolicyEngine,
) -> None:
    """Country and age from Context fill in when the request has neither."""
    context = ContextOutput(
        request_id="r1",
        vector=[0.0],
        hour=1,
        weekday=1,
        device_class="phone",
        country="USA",
        age=19,
    )
    out = engine.evaluate(make_request(), context=context).to_output()
    assert out.denied["beer-1"] == ["age.alcohol"]


def test_every_denied_ad_denies_all(engine: PolicyEngine) -> None:
    """When every candidate is denied, the no-ad reason says so."""
    request = make_request(ads=[ALCOHOL_AD, GAMBLING_AD], country="US", yob=2010)
    out = engine.evaluate(request).to_output()
    assert out.allowed == []
    assert out.no_ad_reason == "policy_denied_all"
    assert out.rules_fired == ["age.alcohol", "age.gambling"]


def test_frequency_caps_deny_the_campaign(engine: PolicyEngine) -> None:
    """A reached cap for a campaign denies that campaign's ads with the cap's id."""
    request = make_request(country="GB", yob=1980)
    out = engine.evaluate(request, caps_reached={"auto-launch": ["daily"]}).to_output()
    assert out.denied == {"car-1": ["frequency_cap.daily"]}


def test_gpp_sections_outside_gpp_sid_are_not_in_force(engine: PolicyEngine) -> None:
    """With gpp_sid [2], the US Privacy section's opt-out does not apply."""
    request = make_request(
        ads=[PLAIN_AD], country="US", privacy={"gpp": GPP_USP_OPT_OUT, "gpp_sid": [2]}
    )
    fired = engine.evaluate(request).to_output().rules_fired
    assert "consent.gpp.opt_out" not in fired
    assert "consent.gdpr.purposes" in fired
