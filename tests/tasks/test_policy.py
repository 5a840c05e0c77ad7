"""Tests of the Policy agent (`tasks.policy`): batches, caps, failing closed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.schemas import AdRequest
from ad_orchestrator.settings import Settings, load_settings
from policies.frequency import record_impression, user_hash
from tasks.base import Upstream
from tasks.policy import PolicyAgent

BEER = {"ad_id": "beer", "campaign_id": "brewery-spring", "categories": ["1004"]}
CAR = {"ad_id": "car", "campaign_id": "auto-launch", "categories": ["1554"]}


def request(rid: str, **user: Any) -> AdRequest:
    return AdRequest.model_validate(
        {
            "request_id": rid,
            "timestamp": datetime(2026, 6, 1, tzinfo=UTC),
            "user": {"id": "u-1", **user},
            "geo": {"country": "US"},
            "slots": [{"slot_id": "s"}],
            "candidates": [CAR, BEER],
        }
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path, id_salt="test-salt")


@pytest.fixture
def agent(settings: Settings) -> PolicyAgent:
    return PolicyAgent(settings, fakeredis.FakeRedis())


def test_batch_answers_each_request_in_order(agent: PolicyAgent) -> None:
    """A batch gets one output per request, in order, with rule ids on denials."""
    batch = [request("a", yob=2026 - 30), request("b", yob=2026 - 19), request("c")]
    out = agent.decide(batch, Upstream())
    assert [o.request_id for o in out] == ["a", "b", "c"]
    assert out[0].allowed == ["car", "beer"]
    assert out[1].denied == {"beer": ["age.alcohol"]}
    assert out[2].denied == {"beer": ["age.alcohol.unknown"]}


def test_exception_for_one_request_denies_only_that_request(
    agent: PolicyAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed per request: the failing one is denied everything, others pass."""
    real = agent.engine.evaluate

    def flaky(req: AdRequest, *args: Any) -> Any:
        if req.request_id == "bad":
            raise RuntimeError("boom")
        return real(req, *args)

    monkeypatch.setattr(agent.engine, "evaluate", flaky)
    good, bad = agent.decide([request("ok", yob=1980), request("bad")], Upstream())
    assert good.allowed == ["car", "beer"]
    assert bad.allowed == []
    assert bad.denied == {"car": ["policy.fail_closed"], "beer": ["policy.fail_closed"]}
    assert bad.rules_fired == ["policy.fail_closed"]
    assert bad.no_ad_reason == "policy_failed"
    assert bad.personalised is False


def test_run_falls_back_to_deny_all_when_the_batch_fails(
    agent: PolicyAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure outside the per-request loop (Redis down) denies the whole batch."""

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("redis down")

    monkeypatch.setattr("tasks.policy.caps_reached", down)
    result = agent.run([request("a", yob=1980)], Upstream())
    assert result["fallback"] is True
    (out,) = result["outputs"]
    assert out["allowed"] == []
    assert out["no_ad_reason"] == "policy_failed"


def test_frequency_cap_denies_after_max_impressions(agent: PolicyAgent) -> None:
    """After `max_impressions` served (hourly cap: 4) the campaign is denied."""
    req = request("a", yob=1980)
    user = user_hash(agent.settings, req)
    assert user is not None and "u-1" not in user
    for _ in range(3):
        record_impression(agent.redis, agent.settings, user, "auto-launch")
    assert agent.decide([req], Upstream())[0].allowed == ["car", "beer"]
    counts = record_impression(agent.redis, agent.settings, user, "auto-launch")
    assert counts == {"hourly": 4, "daily": 4}
    out = agent.decide([req], Upstream())[0]
    assert out.denied == {"car": ["frequency_cap.hourly"]}
    key = agent.settings.key("freq", "hourly", user, "auto-launch")
    assert 0 < agent.redis.ttl(key) <= 3600


def test_no_user_id_records_and_caps_nothing(agent: PolicyAgent) -> None:
    """Without a user or device id there is nothing to count against."""
    assert record_impression(agent.redis, agent.settings, None, "auto-launch") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 2\n", r"bad\.yaml.*`version`"),
        (
            "version: 1\nfrequency_caps: [{id: x, max_impressions: 0, window_s: 1}]\n",
            r"`frequency_caps\.0\.max_impressions`",
        ),
        (
            "version: 1\nrestricted_categories: [{id: a, name: A, categories: ['9999'],"
            " min_age: {default: 18}}]\n",
            r"ids no IAB taxonomy knows: \['9999'\]",
        ),
        (
            "version: 1\nrestricted_categories: [{id: a, name: A, categories: ['1002'],"
            " min_age: {US: 21}}]\n",
            r"needs a `default` age",
        ),
        (
            "version: 1\nrestricted_categories: [{id: a, name: A, categories: ['1002'],"
            " min_age: {default: 18, XX: 21}}]\n",
            r"'XX' is not an ISO 3166-1",
        ),
        ("version: 1\nconsnt: {}\n", r"`consnt`: Extra inputs are not permitted"),
        ("- a list\n", r"must hold a mapping"),
        ("version: 1\n  bad: [\n", r"not valid YAML"),
    ],
    ids=[
        "version",
        "cap-zero",
        "unknown-category",
        "no-default-age",
        "bad-country",
        "typo-key",
        "not-mapping",
        "bad-yaml",
    ],
)
def test_bad_rule_file_stops_the_agent(
    tmp_path: Path, settings: Settings, text: str, message: str
) -> None:
    """A bad rule file raises ConfigError naming file and field at construction."""
    folder = tmp_path / "rules"
    folder.mkdir()
    shipped = settings.policies_dir / "consent.yaml"
    (folder / "consent.yaml").write_text(shipped.read_text())
    (folder / "bad.yaml").write_text(text)
    broken = settings.model_copy(update={"policies_dir": folder})
    with pytest.raises(ConfigError, match=message):
        PolicyAgent(broken, fakeredis.FakeRedis())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"no policy files"),
        ({"a.yaml": "version: 1\n"}, r"defines `consent`"),
    ],
    ids=["empty-folder", "no-consent"],
)
def test_missing_rules_never_allow_silently(
    tmp_path: Path, settings: Settings, files: dict[str, str], message: str
) -> None:
    """An empty rule folder or one without consent rules is an error, not allow-all."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    broken = settings.model_copy(update={"policies_dir": tmp_path})
    with pytest.raises(ConfigError, match=message):
        PolicyAgent(broken, fakeredis.FakeRedis())


def test_duplicate_rule_ids_across_files_are_refused(
    tmp_path: Path, settings: Settings
) -> None:
    """Two files defining the same rule id are refused, naming both files."""
    for name in ("consent.yaml", "frequency_caps.yaml"):
        (tmp_path / name).write_text((settings.policies_dir / name).read_text())
    (tmp_path / "more.yaml").write_text(
        "version: 1\nfrequency_caps: [{id: daily, max_impressions: 1, window_s: 9}]\n"
    )
    broken = settings.model_copy(update={"policies_dir": tmp_path})
    with pytest.raises(ConfigError, match=r"`daily` is already defined in .*frequency"):
        PolicyAgent(broken, fakeredis.FakeRedis())


def test_worker_start_is_refused_with_bad_rules(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker_init hook exits the worker (SystemExit) on an invalid rule file."""
    from ad_orchestrator.app import app
    from tasks.policy import refuse_to_start_with_bad_rules

    (tmp_path / "bad.yaml").write_text("version: 2\n")
    broken = settings.model_copy(update={"policies_dir": tmp_path})
    monkeypatch.setattr(app, "adorch_settings", broken, raising=False)
    with pytest.raises(SystemExit, match=r"bad\.yaml is invalid: `version`"):
        refuse_to_start_with_bad_rules()
    monkeypatch.setattr(app, "adorch_settings", settings, raising=False)
    refuse_to_start_with_bad_rules()  # the shipped rules start fine
