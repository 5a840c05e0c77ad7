"""Versioned message schemas: what crosses a process boundary, and nothing else.

Requests are validated once, at the edge (`parse_request`), and every error names the
field and what was expected. Inside the service the same models travel as JSON-ready
dicts (`model_dump(mode="json")`) over msgpack; nothing is ever pickled.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from ad_orchestrator.errors import RequestValidationError

SCHEMA_VERSION = "1.0"

AgentName = Literal["context", "content", "budget", "policy"]
AGENTS: tuple[AgentName, ...] = ("context", "content", "budget", "policy")

NoBidReason = Literal[
    "no_candidates",
    "policy_denied_all",
    "policy_failed",
    "budget_exhausted",
    "unknown_campaign",
    "below_floor",
    "bot_traffic",
    "deadline",
    "invalid_request",
]


def utcnow() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """Return a new random identifier (32 hex digits)."""
    return uuid.uuid4().hex


class _Model(BaseModel):
    # Requests come from outside: unknown fields are tolerated (forward compatible),
    # but every declared field is checked strictly enough to name what is wrong.
    model_config = ConfigDict(extra="ignore", frozen=False, str_strip_whitespace=True)


# Requests -----------------------------------------------------------------------------


class UserContext(_Model):
    """Who the impression is for; `id` is hashed before it reaches any log."""

    id: str | None = None
    yob: int | None = Field(default=None, ge=1900, le=2100)
    features: dict[str, str | float] = Field(default_factory=dict)
    item_affinity: dict[str, float] = Field(
        default_factory=dict, description="Per-ad affinity, keyed by ad id."
    )


class DeviceContext(_Model):
    """The device as the request describes it; the IP address is never kept."""

    ua: str | None = None
    device_type: int | None = Field(default=None, description="OpenRTB devicetype.")
    os: str | None = None
    ifa: str | None = None
    sua: dict[str, Any] | None = None


class GeoContext(_Model):
    """Where the user is, as far as the request says."""

    country: str | None = Field(default=None, description="ISO 3166 alpha-2 or -3.")
    region: str | None = None
    utcoffset: int | None = Field(default=None, ge=-720, le=840, description="Min.")


class PrivacySignals(_Model):
    """Regulation flags and consent strings as the request carried them."""

    gdpr: bool | None = None
    tcf_consent: str | None = None
    us_privacy: str | None = None
    gpp: str | None = None
    gpp_sid: list[int] = Field(default_factory=list)
    coppa: bool = False


class Blocklists(_Model):
    """What the publisher does not want: categories, advertiser domains, apps."""

    bcat: list[str] = Field(default_factory=list)
    badv: list[str] = Field(default_factory=list)
    bapp: list[str] = Field(default_factory=list)


class PageContext(_Model):
    """The site or app the ad shows in."""

    domain: str | None = None
    bundle: str | None = None
    categories: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)


class Slot(_Model):
    """One place an ad can go (an OpenRTB imp)."""

    slot_id: str = Field(min_length=1)
    position: int = Field(default=1, ge=0)
    bidfloor_cpm: float = Field(default=0.0, ge=0.0)
    width: int | None = Field(default=None, gt=0)
    height: int | None = Field(default=None, gt=0)


class Creative(_Model):
    """What the ad says and where it leads."""

    title: str | None = None
    body: str | None = None
    landing_url: str | None = None
    html: str | None = None


class CandidateAd(_Model):
    """An ad that may be served, with its campaign and its own features."""

    ad_id: str = Field(min_length=1)
    campaign_id: str = Field(min_length=1)
    advertiser_domain: str | None = None
    categories: list[str] = Field(
        default_factory=list, description="IAB category ids of the ad."
    )
    features: dict[str, str | float] = Field(default_factory=dict)
    creative: Creative | None = None
    max_cpm: float = Field(default=1.0, gt=0.0, description="Advertiser's max bid.")


class AdRequest(_Model):
    """One impression opportunity and the ads that could fill it."""

    schema_version: str = SCHEMA_VERSION
    request_id: str = Field(min_length=1, max_length=128)
    timestamp: datetime
    tmax_ms: int | None = Field(default=None, gt=0, le=60_000)
    user: UserContext = Field(default_factory=UserContext)
    device: DeviceContext = Field(default_factory=DeviceContext)
    geo: GeoContext = Field(default_factory=GeoContext)
    privacy: PrivacySignals = Field(default_factory=PrivacySignals)
    blocked: Blocklists = Field(default_factory=Blocklists)
    page: PageContext = Field(default_factory=PageContext)
    slots: list[Slot] = Field(min_length=1)
    candidates: list[CandidateAd] = Field(min_length=1)

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a timezone, for example 2024-01-01T12:00Z")
        return value

    @field_validator("candidates")
    @classmethod
    def _unique_ads(cls, value: list[CandidateAd]) -> list[CandidateAd]:
        seen: set[str] = set()
        for ad in value:
            if ad.ad_id in seen:
                raise ValueError(f"ad ids must be unique, but {ad.ad_id!r} repeats")
            seen.add(ad.ad_id)
        return value


# Agent results ------------------------------------------------------------------------


class TopicScore(_Model):
    """One taxonomy category assigned to a creative, with its score."""

    category: str
    score: float


class ContextOutput(_Model):
    """The Context agent's answer for one request."""

    request_id: str
    vector: list[float]
    hour: int = Field(ge=0, le=23)
    weekday: int = Field(ge=0, le=6)
    device_class: str
    country: str | None
    is_bot: bool = False
    age: int | None = None


class ContentOutput(_Model):
    """The Content agent's answer for one request: per-ad understanding and score."""

    request_id: str
    relevance: dict[str, float] = Field(
        description="Personalised score per ad id (user features); higher is better."
    )
    contextual: dict[str, float] = Field(
        default_factory=dict,
        description="Score per ad id without user features, used without consent.",
    )
    topics: dict[str, list[TopicScore]] = Field(default_factory=dict)
    sentiment: dict[str, float] = Field(default_factory=dict)
    brand_safety: dict[str, list[str]] = Field(default_factory=dict)


class BudgetOutput(_Model):
    """The Budget agent's answer for one request: bids for eligible ads."""

    request_id: str
    bids: dict[str, float] = Field(description="CPM bid per eligible ad id.")
    pacing: dict[str, float] = Field(default_factory=dict, description="Per campaign.")
    ineligible: dict[str, str] = Field(default_factory=dict, description="Ad: why.")


class PolicyOutput(_Model):
    """The Policy agent's answer for one request: what may be shown, and why not."""

    request_id: str
    allowed: list[str]
    denied: dict[str, list[str]] = Field(
        default_factory=dict, description="Ad id: ids of the rules that denied it."
    )
    personalised: bool = False
    rules_fired: list[str] = Field(default_factory=list)
    no_ad_reason: NoBidReason | None = None


class _AgentResultBase(_Model):
    schema_version: str = SCHEMA_VERSION
    weights_version: str | None = None
    fallback: bool = False
    fallback_reason: str | None = None
    elapsed_ms: float = 0.0


class ContextResult(_AgentResultBase):
    agent: Literal["context"] = "context"
    outputs: list[ContextOutput]


class ContentResult(_AgentResultBase):
    agent: Literal["content"] = "content"
    outputs: list[ContentOutput]


class BudgetResult(_AgentResultBase):
    agent: Literal["budget"] = "budget"
    outputs: list[BudgetOutput]


class PolicyResult(_AgentResultBase):
    agent: Literal["policy"] = "policy"
    outputs: list[PolicyOutput]


AgentResult = Annotated[
    ContextResult | ContentResult | BudgetResult | PolicyResult,
    Field(discriminator="agent"),
]
AGENT_RESULT: TypeAdapter[AgentResult] = TypeAdapter(AgentResult)


# Decisions and feedback ---------------------------------------------------------------


class Decision(_Model):
    """What the service decided for one request: an ad with a bid, or a no-bid."""

    schema_version: str = SCHEMA_VERSION
    request_id: str
    decision_id: str = Field(default_factory=new_id)
    outcome: Literal["bid", "no_bid"]
    ad_id: str | None = None
    campaign_id: str | None = None
    slot_id: str | None = None
    bid_cpm: float | None = None
    no_bid_reason: NoBidReason | None = None
    propensity: float | None = Field(
        default=None, description="P(chosen ad) among the ads Policy allowed."
    )
    explored: bool = False
    personalised: bool = False
    fallback: bool = Field(default=False, description="Served because of a deadline.")
    agent_fallbacks: dict[str, str] = Field(default_factory=dict)
    weights_versions: dict[str, str | None] = Field(default_factory=dict)
    agent_timings_ms: dict[str, float] = Field(default_factory=dict)
    rules_fired: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=utcnow)


class FeedbackEvent(_Model):
    """Something that happened after a decision: an impression, click or conversion."""

    schema_version: str = SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=128)
    decision_id: str = Field(min_length=1, max_length=128)
    kind: Literal["impression", "click", "conversion"]
    value: float = Field(
        default=0.0, ge=0.0, description="Price paid (CPM) or conversion value."
    )
    ts: datetime = Field(default_factory=utcnow)


# Validation at the edge ---------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    found = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(root)"
        found.append((path, f"{item['msg']} (got {item.get('input')!r:.60})"))
    return found


def parse_model(model: type[M], data: Any, what: str | None = None) -> M:
    """Validate `data` as `model`, raising `RequestValidationError` naming fields."""
    try:
        if isinstance(data, model):
            return data
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError(what or model.__name__, _problems(error)) from None


def parse_request(data: Any) -> AdRequest:
    """Validate one incoming ad request at the edge of the service."""
    return parse_model(AdRequest, data, "AdRequest")


def parse_feedback(data: Any) -> FeedbackEvent:
    """Validate one incoming feedback event at the edge of the service."""
    return parse_model(FeedbackEvent, data, "FeedbackEvent")
