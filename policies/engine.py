"""The rule engine: which candidate ads a request may see, and whether to personalise.

`PolicyEngine.evaluate` answers for one request from the compiled `RuleSet`, the
request's own signals and what Context and Content found. Rules, in the order they
are checked (every rule that applies is recorded, not only the first):

| rule id | denies an ad when |
|---|---|
| `block.bcat` | one of its categories (or a descendant/mapped id) is in `bcat` |
| `block.badv` | its advertiser domain (or a parent domain) is in `badv` |
| `block.bapp` | the app it promotes (`features.app_bundle`) is in `bapp` |
| `coppa.<category>` | the request is COPPA and the ad is in a restricted category |
| `country.<category>` | the category is banned in the user's country |
| `age.<category>.unknown` | the category has a minimum age and the age is unknown |
| `age.<category>` | the user is younger than the category's age for the country |
| `frequency_cap.<cap>` | the user saw the campaign `max_impressions` times already |

Consent rules deny no ad; they switch personalisation off (contextual decisions
only) and are recorded in `rules_fired`: `consent.coppa`; under GDPR
`consent.gdpr.missing`, `.undecodable`, `.unsupported_version` (TCF v1.1),
`.purposes` (a required purpose lacks consent) and `.vendor` (our vendor lacks
consent, or a publisher restriction rules it out); `consent.us_privacy.opt_out` and
`.invalid`; `consent.gpp.opt_out` and `.invalid`. A signal that cannot be read
counts as no consent. Age comes from `user.yob` as the youngest the user can be
at the request's time (`year - yob - 1`), because the birthday is unknown and a rule
with a minimum age must not be satisfied by a guess in the user's favour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ad_orchestrator.schemas import (
    AdRequest,
    CandidateAd,
    ContentOutput,
    ContextOutput,
    PolicyOutput,
)
from ad_orchestrator.taxonomy import Taxonomy
from policies import tcf
from policies.privacy import (
    GPP_TCF_EU,
    PrivacySignalError,
    parse_gpp,
    us_privacy_opt_out,
)
from policies.schema import RestrictedCategory, RuleSet, country_alpha2

log = logging.getLogger(__name__)

FAIL_CLOSED = "policy.fail_closed"
CACHE_LIMIT = 50_000  # distinct category lists kept per process


@dataclass(frozen=True)
class Finding:
    """One rule that fired, and why, in words a person can check."""

    rule_id: str
    reason: str


@dataclass
class Evaluation:
    """The engine's full answer for one request, with reasons (for `explain`)."""

    request_id: str
    allowed: list[str]
    denied: dict[str, list[Finding]]
    personalised: bool
    consent: list[Finding] = field(default_factory=list)
    age: int | None = None
    country: str | None = None

    @property
    def rules_fired(self) -> list[str]:
        """Every rule id that fired for this request, sorted, each once."""
        fired = {finding.rule_id for finding in self.consent}
        for findings in self.denied.values():
            fired.update(finding.rule_id for finding in findings)
        return sorted(fired)

    def to_output(self) -> PolicyOutput:
        """Return the compact form the reducer reads."""
        return PolicyOutput(
            request_id=self.request_id,
            allowed=self.allowed,
            denied={
                ad_id: sorted({f.rule_id for f in findings})
                for ad_id, findings in self.denied.items()
            },
            personalised=self.personalised,
            rules_fired=self.rules_fired,
            no_ad_reason="policy_denied_all" if not self.allowed else None,
        )


def fail_closed(request: AdRequest) -> PolicyOutput:
    """Deny every candidate of a request because Policy itself failed."""
    return PolicyOutput(
        request_id=request.request_id,
        allowed=[],
        denied={ad.ad_id: [FAIL_CLOSED] for ad in request.candidates},
        personalised=False,
        rules_fired=[FAIL_CLOSED],
        no_ad_reason="policy_failed",
    )


def age_at(yob: int | None, request: AdRequest) -> int | None:
    """Return the youngest age a user born in `yob` can be at the request's time."""
    if yob is None:
        return None
    age = request.timestamp.year - yob - 1
    return age if age >= 0 else None


def _domain_blocked(domain: str | None, blocked: set[str]) -> bool:
    if not domain or not blocked:
        return False
    name = domain.strip().lower().removeprefix("www.")
    return any(name == b or name.endswith("." + b) for b in blocked)


class PolicyEngine:
    """Evaluate a compiled rule set against requests.

    Args:
        rules: The merged, validated rule set (`policies.schema.load_rules`).
        taxonomy: IAB taxonomies, to expand category ids to their descendants.
    """

    def __init__(self, rules: RuleSet, taxonomy: Taxonomy) -> None:
        self.rules = rules
        self.taxonomy = taxonomy
        self._restricted: list[tuple[RestrictedCategory, frozenset[str]]] = []
        for rule in rules.restricted_categories:
            ids = (
                taxonomy.expand(rule.categories)
                if rule.include_descendants
                else set(rule.categories)
            )
            self._restricted.append((rule, frozenset(ids)))
        # Per-process caches: the same few category lists recur on every request.
        self._labels: dict[tuple[str, ...], frozenset[str]] = {}
        self._restricted_by_labels: dict[frozenset[str], list[RestrictedCategory]] = {}

    # Categories --------------------------------------------------------------

    def labels(self, categories: Iterable[str]) -> frozenset[str]:
        """Return an ad's category ids plus the ids they map to in other taxonomies."""
        key = tuple(categories)
        found = self._labels.get(key)
        if found is None:
            if len(self._labels) >= CACHE_LIMIT:
                self._labels.clear()
            ids = set(key)
            for category in key:
                ids |= self.taxonomy.mapped.get(category, set())
            found = self._labels[key] = frozenset(ids)
        return found

    def restricted_of(self, labels: frozenset[str]) -> list[RestrictedCategory]:
        """Return the restricted categories an ad with these labels falls under."""
        found = self._restricted_by_labels.get(labels)
        if found is None:
            if len(self._restricted_by_labels) >= CACHE_LIMIT:
                self._restricted_by_labels.clear()
            found = [rule for rule, ids in self._restricted if labels & ids]
            self._restricted_by_labels[labels] = found
        return found

    def _ad_labels(
        self, ad: CandidateAd, content: ContentOutput | None
    ) -> frozenset[str]:
        settings = self.rules.content_topics
        topics = content.topics.get(ad.ad_id) if content is not None else None
        if not topics or not settings.use_content_topics:
            return self.labels(ad.categories)
        found = [t.category for t in topics if t.score >= settings.min_score]
        return self.labels([*ad.categories, *found])

    # Consent -----------------------------------------------------------------

    def consent(self, request: AdRequest, country: str | None) -> list[Finding]:
        """Return the consent rules that forbid personalisation (empty: allowed).

        GDPR applies when `regs.gdpr` says so; when the request does not say, when
        `gpp_sid` lists the TCF EU section (2) or the user is in a GDPR country.
        The TC string is `user.consent`, or the GPP string's TCF EU section. With
        `gpp_sid` given, only the GPP sections it lists are in force.
        """
        rules = self.rules.consent
        privacy = request.privacy
        found: list[Finding] = []
        if privacy.coppa:
            found.append(Finding("consent.coppa", "COPPA applies (regs.coppa=1)"))
        gpp, gpp_problem = None, None
        if privacy.gpp:
            try:
                gpp = parse_gpp(privacy.gpp)
            except PrivacySignalError as error:
                gpp_problem = Finding("consent.gpp.invalid", str(error))
        gdpr = privacy.gdpr
        if gdpr is None:
            gdpr = GPP_TCF_EU in privacy.gpp_sid or (
                country is not None and country in rules.gdpr_countries
            )
        if gdpr:
            consent = privacy.tcf_consent
            if not consent and gpp is not None:
                consent = gpp.sections.get(GPP_TCF_EU)
            found.extend(self._tcf(consent))
        if rules.honour_us_privacy and privacy.us_privacy:
            try:
                if us_privacy_opt_out(privacy.us_privacy):
                    found.append(
                        Finding(
                            "consent.us_privacy.opt_out",
                            f"US Privacy {privacy.us_privacy!r} opts out of sale",
                        )
                    )
            except PrivacySignalError as error:
                found.append(Finding("consent.us_privacy.invalid", str(error)))
        if rules.honour_gpp and gpp_problem is not None:
            found.append(gpp_problem)
        elif rules.honour_gpp and gpp is not None:
            in_force = set(privacy.gpp_sid) or set(gpp.section_ids)
            sections = sorted(
                sid
                for sid, fields in gpp.opt_outs.items()
                if sid in in_force and any(fields.values())
            )
            if sections:
                found.append(
                    Finding(
                        "consent.gpp.opt_out",
                        f"GPP section(s) {sections} opt out of sale, sharing or "
                        "targeted advertising",
                    )
                )
        return found

    def _tcf(self, consent: str | None) -> list[Finding]:
        rules = self.rules.consent
        if not consent:
            return [Finding("consent.gdpr.missing", "GDPR applies; no TC string")]
        try:
            # Version first: a v1.1 string is unsupported whether or not the rest
            # of it decodes (some v1.1-looking strings carry v2-shaped bodies).
            version = tcf.detect_version(consent)
            decoded = None if version == 1 else tcf.decode(consent)
        except tcf.TCFDecodeError as error:
            return [Finding("consent.gdpr.undecodable", str(error))]
        if decoded is None or decoded.version not in rules.supported_tcf_versions:
            return [
                Finding(
                    "consent.gdpr.unsupported_version",
                    f"TC string is TCF v{version}; the rules accept versions "
                    f"{rules.supported_tcf_versions}",
                )
            ]
        found = []
        missing = [
            p for p in rules.required_purposes if p not in decoded.purpose_consents
        ]
        if missing:
            found.append(
                Finding("consent.gdpr.purposes", f"no consent for purposes {missing}")
            )
        vendor = rules.vendor_id
        if rules.require_vendor_consent and not decoded.vendor_may_use(
            vendor, [p for p in rules.required_purposes if p not in missing]
        ):
            found.append(
                Finding(
                    "consent.gdpr.vendor",
                    f"vendor {vendor} lacks consent (or a publisher restriction "
                    "forbids a required purpose)",
                )
            )
        return found

    # Evaluation --------------------------------------------------------------

    def evaluate(
        self,
        request: AdRequest,
        context: ContextOutput | None = None,
        content: ContentOutput | None = None,
        caps_reached: Mapping[str, list[str]] | None = None,
    ) -> Evaluation:
        """Decide which candidates of one request may be shown.

        Args:
            request: The request.
            context: Context's output for it, if Context ran (country, age).
            content: Content's output for it, if Content ran (topics per ad).
            caps_reached: Campaign id -> ids of frequency caps the user has
                reached for it (from `policies.frequency`).

        Returns:
            Allowed ad ids (in candidate order), denials with reasons, and whether
            personalised selection is allowed.
        """
        raw_country = request.geo.country or (context.country if context else None)
        country = country_alpha2(raw_country) if raw_country else None
        age = age_at(request.user.yob, request)
        if age is None and context is not None:
            age = context.age
        coppa = request.privacy.coppa
        blocked_categories = self.taxonomy.expand(request.blocked.bcat)
        blocked_domains = {d.strip().lower() for d in request.blocked.badv if d}
        blocked_apps = {a.strip() for a in request.blocked.bapp if a}
        caps_reached = caps_reached or {}

        allowed: list[str] = []
        denied: dict[str, list[Finding]] = {}
        for ad in request.candidates:
            labels = self._ad_labels(ad, content)
            findings: list[Finding] = []
            hit = labels & blocked_categories if blocked_categories else None
            if hit:
                findings.append(
                    Finding("block.bcat", f"categories {sorted(hit)} are in bcat")
                )
            if _domain_blocked(ad.advertiser_domain, blocked_domains):
                findings.append(
                    Finding("block.badv", f"advertiser {ad.advertiser_domain} in badv")
                )
            bundle = ad.features.get("app_bundle") if blocked_apps else None
            if isinstance(bundle, str) and bundle in blocked_apps:
                findings.append(Finding("block.bapp", f"app {bundle} is in bapp"))
            for rule in self.restricted_of(labels):
                findings.extend(self._restricted_findings(rule, coppa, country, age))
            for cap in caps_reached.get(ad.campaign_id, ()) if caps_reached else ():
                findings.append(
                    Finding(
                        f"frequency_cap.{cap}",
                        f"user reached cap {cap} for campaign {ad.campaign_id}",
                    )
                )
            if findings:
                denied[ad.ad_id] = findings
            else:
                allowed.append(ad.ad_id)
        consent = self.consent(request, country)
        return Evaluation(
            request_id=request.request_id,
            allowed=allowed,
            denied=denied,
            personalised=not consent,
            consent=consent,
            age=age,
            country=country,
        )

    @staticmethod
    def _restricted_findings(
        rule: RestrictedCategory, coppa: bool, country: str | None, age: int | None
    ) -> list[Finding]:
        if coppa:
            return [
                Finding(f"coppa.{rule.id}", f"{rule.name} is never shown under COPPA")
            ]
        if country is not None and country in rule.banned_countries:
            return [Finding(f"country.{rule.id}", f"{rule.name} banned in {country}")]
        minimum = rule.age_for(country)
        if minimum <= 0:
            return []
        if age is None:
            return [
                Finding(
                    f"age.{rule.id}.unknown",
                    f"{rule.name} needs age {minimum}+ and the age is unknown",
                )
            ]
        if age < minimum:
            where = country or "an unknown country"
            return [
                Finding(
                    f"age.{rule.id}",
                    f"{rule.name} needs age {minimum}+ in {where}; user is at "
                    f"least {age}",
                )
            ]
        return []
