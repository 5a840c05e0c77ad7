"""Compliance as data: YAML rule sets, their schema and the engine that runs them.

`load_rule_set(settings)` reads and validates every rule file in
`settings.policies_dir` (a bad file raises `ConfigError`); `build_engine(settings)`
returns a ready `PolicyEngine`. Both are cached per folder, so a worker process
parses its rules once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ad_orchestrator.settings import Settings
from ad_orchestrator.taxonomy import load_taxonomy
from policies.engine import Evaluation, Finding, PolicyEngine, fail_closed
from policies.schema import RuleSet, load_rules

__all__ = [
    "Evaluation",
    "Finding",
    "PolicyEngine",
    "RuleSet",
    "build_engine",
    "fail_closed",
    "load_rule_set",
]


def _taxonomy_dir(settings: Settings) -> Path:
    return settings.data_dir / "iab-taxonomy"


@lru_cache(maxsize=8)
def _cached(policies_dir: Path, taxonomy_dir: Path) -> PolicyEngine:
    taxonomy = load_taxonomy(taxonomy_dir)
    return PolicyEngine(load_rules(policies_dir, taxonomy), taxonomy)


def build_engine(settings: Settings) -> PolicyEngine:
    """Return the engine for the rule files in `settings.policies_dir`.

    Raises:
        ConfigError: a rule file or the taxonomy is missing or invalid.
    """
    return _cached(settings.policies_dir.resolve(), _taxonomy_dir(settings).resolve())


def load_rule_set(settings: Settings) -> RuleSet:
    """Return the validated, merged rule set of `settings.policies_dir`."""
    return build_engine(settings).rules
