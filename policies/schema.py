"""The schema of a policy rule file, and loading every rule file of a folder.

Rules are data: each `policies/*.yaml` file is a `RuleFile`. Loading merges the files
into one `RuleSet` and validates everything at start (unknown keys, wrong types,
duplicate rule ids, category ids that no IAB taxonomy knows, country codes that do
not exist, a missing consent section). A bad file raises `ConfigError` naming the file
and the field, so a worker with a broken rule set never starts; it never falls back to
allowing everything.

A rule file looks like this (all sections optional, but the merged set needs exactly
one `consent` section):

    version: 1
    description: Age-restricted products.
    restricted_categories:
      - id: alcohol
        name: Alcohol
        categories: ["1002", "IAB8-5", "211"]   # Ad Product 2.0, Content 1.0, 3.1
        min_age: {default: 18, US: 21}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import pycountry
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.taxonomy import Taxonomy

log = logging.getLogger(__name__)

RULE_ID = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$"
TCF_PURPOSES = range(1, 12)  # TCF v2.2 defines purposes 1..11


def country_alpha2(code: str) -> str | None:
    """Return the ISO 3166-1 alpha-2 code for an alpha-2 or alpha-3 code, any case."""
    text = code.strip().upper()
    if len(text) == 2:
        found = pycountry.countries.get(alpha_2=text)
    elif len(text) == 3:
        found = pycountry.countries.get(alpha_3=text)
    else:
        return None
    return found.alpha_2 if found is not None else None


class _Strict(BaseModel):
    # Rule files are written by people: a misspelt key must fail, not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsentRules(_Strict):
    """What consent personalised selection needs, per privacy regime."""

    vendor_id: int = Field(ge=1, le=65535, description="Our TCF vendor id.")
    required_purposes: list[int] = Field(
        min_length=1, description="TCF purposes that all need consent."
    )
    require_vendor_consent: bool = True
    supported_tcf_versions: list[Literal[2]] = Field(
        default=[2], description="Only TCF v2 is still in force."
    )
    honour_us_privacy: bool = True
    honour_gpp: bool = True
    gdpr_countries: list[str] = Field(
        default_factory=list,
        description="Where GDPR applies when the request does not say (regs.gdpr "
        "absent); an empty list trusts the request's flag only.",
    )

    @field_validator("required_purposes")
    @classmethod
    def _known_purposes(cls, value: list[int]) -> list[int]:
        bad = [p for p in value if p not in TCF_PURPOSES]
        if bad:
            raise ValueError(f"TCF purposes are 1..11, but got {bad}")
        return value

    @field_validator("gdpr_countries")
    @classmethod
    def _countries(cls, value: list[str]) -> list[str]:
        return [_alpha2(code) for code in value]


def _alpha2(code: str) -> str:
    found = country_alpha2(code)
    if found is None:
        raise ValueError(f"{code!r} is not an ISO 3166-1 country code")
    return found


class RestrictedCategory(_Strict):
    """Ad categories that only adults (per country) may see, or nobody somewhere."""

    id: str = Field(pattern=RULE_ID, description="Rule id stem, e.g. alcohol.")
    name: str = Field(min_length=1)
    categories: list[str] = Field(min_length=1, description="IAB category ids.")
    include_descendants: bool = True
    min_age: dict[str, int] = Field(
        description="`default` plus per-country (alpha-2) overrides, in years."
    )
    banned_countries: list[str] = Field(default_factory=list)

    @field_validator("min_age")
    @classmethod
    def _ages(cls, value: dict[str, int]) -> dict[str, int]:
        if "default" not in value:
            raise ValueError("needs a `default` age (used where no country matches)")
        result = {}
        for key, age in value.items():
            if not 0 <= age <= 99:
                raise ValueError(f"age for {key} must be 0..99, but got {age}")
            result[key if key == "default" else _alpha2(key)] = age
        return result

    @field_validator("banned_countries")
    @classmethod
    def _banned(cls, value: list[str]) -> list[str]:
        return [_alpha2(code) for code in value]

    def age_for(self, country: str | None) -> int:
        """Return the minimum age for a country (alpha-2), or the default."""
        if country is not None and country in self.min_age:
            return self.min_age[country]
        return self.min_age["default"]


class FrequencyCap(_Strict):
    """At most `max_impressions` per user and campaign in a `window_s` window."""

    id: str = Field(pattern=RULE_ID)
    campaigns: list[str] = Field(
        default_factory=lambda: ["*"], description="Campaign ids, or * for all."
    )
    max_impressions: int = Field(ge=1)
    window_s: int = Field(ge=1, le=90 * 86400)

    def applies_to(self, campaign_id: str) -> bool:
        """Say whether the cap counts impressions of this campaign."""
        return "*" in self.campaigns or campaign_id in self.campaigns


class ContentTopics(_Strict):
    """How the Content agent's topics add to an ad's declared categories."""

    use_content_topics: bool = True
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)


class RuleFile(_Strict):
    """One `policies/*.yaml` file."""

    version: Literal[1]
    description: str = ""
    consent: ConsentRules | None = None
    content_topics: ContentTopics | None = None
    restricted_categories: list[RestrictedCategory] = Field(default_factory=list)
    frequency_caps: list[FrequencyCap] = Field(default_factory=list)


class RuleSet(_Strict):
    """All rule files merged; what the engine runs."""

    sources: list[str]
    consent: ConsentRules
    content_topics: ContentTopics = ContentTopics()
    restricted_categories: list[RestrictedCategory] = Field(default_factory=list)
    frequency_caps: list[FrequencyCap] = Field(default_factory=list)


def _field_path(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


def _read_file(path: Path) -> RuleFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"policy file {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"policy file {path} must hold a mapping with `version: 1` at the top, "
            f"but holds {type(data).__name__}"
        )
    try:
        return RuleFile.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"`{_field_path(item['loc'])}`: {item['msg']}" for item in error.errors()
        )
        raise ConfigError(
            f"policy file {path} is invalid: {problems}. Fix the file (see "
            "policies/schema.py for the fields) and restart the worker."
        ) from None


def load_rules(folder: Path, taxonomy: Taxonomy) -> RuleSet:
    """Load, merge and validate every `*.yaml` rule file in `folder`.

    Raises:
        ConfigError: the folder has no rule files, a file is invalid, a rule id
            repeats, a category id is unknown, or there is not exactly one
            `consent` section.
    """
    paths = sorted(folder.glob("*.yaml"))
    if not paths:
        raise ConfigError(
            f"no policy files (*.yaml) in {folder}; set ADORCH_POLICIES_DIR to the "
            "folder holding them (the repository ships policies/)"
        )
    consent: list[tuple[Path, ConsentRules]] = []
    topics: list[tuple[Path, ContentTopics]] = []
    restricted: list[RestrictedCategory] = []
    caps: list[FrequencyCap] = []
    seen: dict[str, Path] = {}
    for path in paths:
        rules = _read_file(path)
        if rules.consent is not None:
            consent.append((path, rules.consent))
        if rules.content_topics is not None:
            topics.append((path, rules.content_topics))
        ids = [rule.id for rule in rules.restricted_categories] + [
            cap.id for cap in rules.frequency_caps
        ]
        for rule_id in ids:
            if rule_id in seen:
                raise ConfigError(
                    f"policy file {path}: rule id `{rule_id}` is already defined in "
                    f"{seen[rule_id]}; rule ids must be unique across files"
                )
            seen[rule_id] = path
        for index, category in enumerate(rules.restricted_categories):
            unknown = [c for c in category.categories if c not in taxonomy.names]
            if unknown:
                raise ConfigError(
                    f"policy file {path}: `restricted_categories.{index}.categories` "
                    f"has ids no IAB taxonomy knows: {unknown}; use Ad Product 2.0, "
                    "Content 3.1 or Content 1.0 (IAB...) ids from data/iab-taxonomy/"
                )
        restricted.extend(rules.restricted_categories)
        caps.extend(rules.frequency_caps)
    for section, found in (("consent", consent), ("content_topics", topics)):
        if len(found) > 1:
            names = ", ".join(str(path) for path, _ in found)
            raise ConfigError(
                f"policy files {names} each define `{section}`; exactly one may"
            )
    if not consent:
        raise ConfigError(
            f"no policy file in {folder} defines `consent` (vendor_id and "
            "required_purposes); without it consent cannot be checked"
        )
    log.info(
        "loaded %d policy file(s): %d restricted categories, %d frequency caps",
        len(paths),
        len(restricted),
        len(caps),
    )
    return RuleSet(
        sources=[str(path) for path in paths],
        consent=consent[0][1],
        content_topics=topics[0][1] if topics else ContentTopics(),
        restricted_categories=restricted,
        frequency_caps=caps,
    )
