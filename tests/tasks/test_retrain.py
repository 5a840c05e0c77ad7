"""Tests of the periodic retrain from our own decision and feedback streams."""

from __future__ import annotations

import json
import uuid

import fakeredis
import numpy as np
import pandas as pd
import pytest

from ad_orchestrator.errors import LearningError
from ad_orchestrator.features import ContextFields, encode_context
from ad_orchestrator.settings import load_settings
from ad_orchestrator.weights import WeightStore
from rl.networks import ContentQNet
from tasks.retrain import (
    TASK_NAME,
    RetrainOptions,
    beat_schedule,
    build_log,
    make_beat_schedule,
    read_decisions,
    retrain,
    retrain_task,
)

NOW = 1_700_000_000.0
ADS = [f"ad{k}" for k in range(6)]


def decision_entry(i: int, rng: np.random.Generator) -> dict[str, str]:
    """One reducer record: 4-6 candidates, one denied, uniform choice."""
    candidates = sorted(rng.choice(ADS, size=int(rng.integers(4, 7)), replace=False))
    allowed = candidates[1:]
    chosen = str(rng.choice(allowed))
    return {
        "decision_id": f"d{i}",
        "request_id": f"r{i}",
        "ts": f"2024-05-0{1 + i % 7}T{i % 24:02d}:00:00+00:00",
        "context": json.dumps(
            {
                "hour": i % 24,
                "weekday": i % 7,
                "device_class": "mobile" if i % 2 else "desktop",
                "country": "DE",
                "position": i % 3,
                "user_features": {"segment": "s" + str(i % 4)},
            }
        ),
        "candidates": json.dumps(candidates),
        "allowed": json.dumps(allowed),
        "chosen": chosen,
        "propensity": str(1.0 / len(allowed)),
    }


@pytest.fixture
def settings(tmp_path):
    """Settings with a private key prefix and a fixed HMAC key."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return load_settings(
        key_prefix=prefix,
        feedback_stream=f"{prefix}:feedback",
        weights_hmac_key="r" * 32,
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def client():
    """A bytes-returning fakeredis client."""
    return fakeredis.FakeRedis()


def fill_streams(client, settings, n: int, start: int = 0) -> list[dict[str, str]]:
    """Append `n` decisions (an hour before NOW) and clicks on ad0/ad1."""
    rng = np.random.default_rng(start)
    entries = [decision_entry(i, rng) for i in range(start, start + n)]
    base_ms = int((NOW - 3600) * 1000)
    for i, entry in enumerate(entries, start=start):
        client.xadd(settings.key("decisions"), entry, id=f"{base_ms + i}-0")
        if entry["chosen"] in {"ad0", "ad1"} and rng.random() < 0.5:
            client.xadd(
                settings.feedback_stream,
                {
                    "event_id": f"e{i}",
                    "decision_id": entry["decision_id"],
                    "kind": "click",
                    "value": "0",
                    "ts": entry["ts"],
                },
                id=f"{base_ms + i}-1",
            )
    client.hset(
        settings.key("ads"),
        mapping={ad: json.dumps({"price": float(k), "brand": ad}) for k, ad in
                 enumerate(ADS)},
    )  # fmt: skip
    return entries


# Building the log ---------------------------------------------------------------------


def test_build_log_lines_up_actions_masks_rewards_and_contexts():
    """Each record becomes one row, encoded as the serving agent encodes it."""
    rng = np.random.default_rng(0)
    entries = [decision_entry(i, rng) for i in range(30)]
    clicked = {"d3", "d7"}
    features = {ad: {"price": 1.0} for ad in ADS}

    log, masks = build_log(entries, clicked, features)

    assert log.n_rounds == 30 and log.n_actions == len(ADS)
    assert list(log.item_ids) == ADS
    assert np.all(np.diff(log.timestamps.astype(np.int64)) >= 0)
    by_ts = {entry["ts"]: entry for entry in entries}
    for row in range(log.n_rounds):
        stamp = pd.Timestamp(log.timestamps[row]).tz_localize("UTC").isoformat()
        decision = by_ts[stamp]
        assert ADS[log.actions[row]] == decision["chosen"]
        allowed = json.loads(decision["allowed"])
        assert masks[row].tolist() == [ad in allowed for ad in ADS]
        assert log.rewards[row] == (1.0 if decision["decision_id"] in clicked else 0)
        assert log.pscore[row] == pytest.approx(1 / len(allowed))
        fields = log.context_fields(row)
        assert fields.country == "DE"
        assert log.positions[row] == fields.position + 1
        assert np.array_equal(log.contexts[row], encode_context([fields])[0])


@pytest.mark.parametrize("position", [1, 2, 3, 4])
def test_stream_log_reencodes_contexts_at_another_position(position):
    """`contexts_at(k)` is exactly `encode_context` at slot position k - 1."""
    rng = np.random.default_rng(1)
    log, _ = build_log([decision_entry(i, rng) for i in range(5)], set(), {})

    moved = log.contexts_at(position)
    part = log.subset(slice(1, 3))

    expected = [
        ContextFields(**{**vars_of(log.context_fields(i)), "position": position - 1})
        for i in range(5)
    ]
    assert np.array_equal(moved, encode_context(expected))
    assert part.n_rounds == 2
    assert part.context_fields(0) == log.context_fields(1)
    assert log.len_list == 4


def vars_of(fields: ContextFields) -> dict[str, object]:
    """Return a slotted dataclass's fields as a dict."""
    return {name: getattr(fields, name) for name in fields.__slots__}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chosen": ""}, "none of the 1 decision records is usable"),
        ({"chosen": "ad99"}, "none of the 1 decision records is usable"),
        ({"propensity": "0"}, "none of the 1 decision records is usable"),
        ({"propensity": "1.5"}, "none of the 1 decision records is usable"),
    ],
)
def test_build_log_refuses_when_nothing_is_usable(change, message):
    """Records without a valid choice or propensity cannot train anything."""
    entry = {**decision_entry(0, np.random.default_rng(2)), **change}

    with pytest.raises(LearningError, match=message):
        build_log([entry], set(), {})


def test_read_decisions_leaves_out_decisions_waiting_for_clicks(client, settings):
    """Decisions younger than `min_age_s` are not read yet."""
    fill_streams(client, settings, 10)
    fresh_ms = int((NOW - 5) * 1000)
    client.xadd(settings.key("decisions"), {"decision_id": "fresh"}, id=f"{fresh_ms}-0")

    found = read_decisions(client, settings, max_rows=100, min_age_s=60, now=NOW)

    assert [fields["decision_id"] for _, fields in found] == [
        f"d{i}" for i in range(10)
    ]


# Retraining -----------------------------------------------------------------------


def options(**changes) -> RetrainOptions:
    """Small thresholds and a short training."""
    base = {"min_new": 100, "min_clicks": 3, "min_age_s": 60, "steps": 20}
    return RetrainOptions(**{**base, **changes})


def test_retrain_skips_until_enough_new_decisions(client, settings):
    """Fewer new decisions than `min_new` trains nothing."""
    fill_streams(client, settings, 50)

    summary = retrain(settings, client, options(), now=NOW)

    assert summary["status"] == "skipped"
    assert summary["reason"] == "50 new decisions since the last retrain, 100 needed"


def test_retrain_skips_without_enough_clicks(client, settings):
    """A window with too few clicks is not worth an evaluation."""
    fill_streams(client, settings, 120)

    summary = retrain(settings, client, options(min_clicks=10_000), now=NOW)

    assert summary["status"] == "skipped"
    assert "10000 needed" in summary["reason"]


def test_retrain_promotes_then_waits_for_new_data(client, settings, tmp_path):
    """The first retrain publishes version 1; the next one waits for new data."""
    fill_streams(client, settings, 300)
    store = WeightStore(client, settings)

    first = retrain(settings, client, options(out_dir=tmp_path), now=NOW)
    second = retrain(settings, client, options(out_dir=tmp_path), now=NOW)

    assert first["status"] == "promoted" and first["version"] == 1
    assert store.serving_version("content") == 1
    _, meta = store.load("content", 1, ContentQNet.INPUT_SCHEMA)
    assert meta["data"]["source"] == "decision stream"
    assert meta["data"]["n_rows"] == 300
    assert meta["data"]["clicks"] == first["clicks"] > 0
    assert second["status"] == "skipped"
    assert second["reason"].startswith("0 new decisions")


def test_retrain_does_not_run_twice_at_once(client, settings):
    """A held lock makes a second retrain stand aside."""
    fill_streams(client, settings, 300)
    client.set(settings.key("retrain", "lock"), "busy")

    summary = retrain(settings, client, options(), now=NOW)

    assert summary == {"status": "skipped", "reason": "another retrain is running"}


def test_beat_schedule_sends_the_retrain_task(settings):
    """The exported beat entry names the registered task and expires per period."""
    from ad_orchestrator.app import app

    entry = make_beat_schedule(settings)["retrain-content"]

    assert entry["task"] == TASK_NAME == "adorch.retrain"
    assert entry["options"]["expires"] == entry["schedule"] > 0
    assert beat_schedule == make_beat_schedule(None)
    assert TASK_NAME in app.tasks


@pytest.mark.integration
def test_the_task_runs_in_the_app_and_skips_without_data():
    """The Celery task reads the app's settings and Redis and answers as JSON."""
    result = retrain_task.apply(kwargs={"min_new": 10**9}).get(timeout=60)

    assert result["status"] == "skipped"
    assert result["reason"].endswith(f"{10**9} needed")
