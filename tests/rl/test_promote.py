"""Tests of the promotion gate and the `make train` pipeline around it."""

from __future__ import annotations

import argparse
import json
import logging
import uuid

import fakeredis
import numpy as np
import pytest

from ad_orchestrator.errors import LearningError
from ad_orchestrator.settings import load_settings
from ad_orchestrator.weights import WeightStore
from rl.envs.obd import load_obd
from rl.networks import ContentQNet
from rl.pacing import PacingQNet
from rl.promote import (
    GateDecision,
    add_arguments,
    decide_promotion,
    format_decision,
    main,
    paired_mean_bootstrap,
    train_and_promote,
    train_and_promote_budget,
)
from rl.trainer import TrainConfig

# The gate on synthetic figures ------------------------------------------------------


def test_first_candidate_without_figures_promotes_unjudged():
    """No serving version and no logging value (Budget's case): version 1 promotes."""
    decision = decide_promotion(serving_version=None)

    assert decision.promote
    assert decision.passed
    assert not decision.forced
    assert "first candidate" in decision.reason


@pytest.mark.parametrize(
    ("low", "tolerance", "promote"),
    [
        (0.0002, 0.05, True),  # better, clearly
        (-0.0001, 0.05, True),  # worse by at most 2% of 0.005: within 5%
        (-0.00025, 0.05, True),  # exactly on the threshold
        (-0.0003, 0.05, False),  # may be 6% worse: beyond 5%
        (-0.0001, 0.0, False),  # no tolerance: any possible loss refuses
        (-0.0009, 0.2, True),  # 18% worse tolerated by a 20% tolerance
    ],
)
def test_gate_compares_the_interval_lower_end_with_the_tolerance(
    low, tolerance, promote
):
    """Promote iff the paired lower bound >= -tolerance x serving value."""
    decision = decide_promotion(
        serving_version=3,
        serving_value=0.005,
        difference=low + 0.0004,
        difference_low=low,
        difference_high=low + 0.0008,
        tolerance=tolerance,
    )

    assert decision.promote is promote
    assert decision.passed is promote
    assert decision.threshold == pytest.approx(-tolerance * 0.005)
    assert decision.serving_version == 3


def test_refusal_explains_itself():
    """A refused candidate's reason names the bound and the threshold."""
    decision = decide_promotion(
        serving_version=2,
        serving_value=0.004,
        difference=-0.001,
        difference_low=-0.002,
        difference_high=0.0,
        tolerance=0.1,
        estimator="dr",
    )

    assert not decision.promote
    assert decision.reason.startswith("candidate may be worse than serving: DR")
    assert "-0.002000 < threshold -0.000400" in decision.reason


def test_force_promotes_a_refused_candidate_and_marks_it():
    """`force` overrides a refusal, and the decision says it was forced."""
    decision = decide_promotion(
        serving_version=2,
        serving_value=0.004,
        difference=-0.001,
        difference_low=-0.002,
        difference_high=0.0,
        force=True,
    )

    assert decision.promote
    assert not decision.passed
    assert decision.forced


def test_force_on_a_passing_candidate_is_not_reported_as_forced():
    """Forcing what passes anyway changes nothing worth a banner."""
    decision = decide_promotion(
        serving_version=2,
        serving_value=0.004,
        difference=0.001,
        difference_low=0.0,
        difference_high=0.002,
        force=True,
    )

    assert decision.promote and decision.passed and not decision.forced


def test_forced_decision_prints_a_banner():
    """The console output of a forced promotion cannot be missed."""
    decision = GateDecision(
        promote=True,
        passed=False,
        forced=True,
        reason="candidate may be worse",
        tolerance=0.05,
        estimator="snipw",
    )

    text = format_decision(decision, 7, None)

    assert "FORCED PROMOTION" in text
    assert "gate: PROMOTED as version 7" in text


@pytest.mark.parametrize(
    ("low", "promote"),
    [
        (0.0, True),  # serves the logging policy itself: difference exactly 0
        (-0.0001, True),  # may be 2.5% worse than 0.004: within 5%
        (-0.0002, True),  # exactly on the threshold
        (-0.0035, False),  # the overfitted candidate: may be ~90% worse
    ],
)
def test_first_version_is_judged_against_the_logging_policy(low, promote):
    """With nothing serving, the candidate must not be worse than logging."""
    decision = decide_promotion(
        serving_version=None,
        logging_value=0.004,
        difference=low + 0.001,
        difference_low=low,
        difference_high=low + 0.002,
        tolerance=0.05,
    )

    assert decision.promote is promote
    assert decision.passed is promote
    assert decision.baseline == "logging"
    assert decision.logging_value == 0.004
    assert decision.serving_value is None
    assert decision.threshold == pytest.approx(-0.0002)
    assert "judged against the logging policy" in decision.reason
    assert ("may be worse than the logging policy" in decision.reason) is not promote


def test_force_promotes_a_first_version_worse_than_logging_loudly():
    """`force` overrides the logging comparison too, and is marked forced."""
    decision = decide_promotion(
        serving_version=None,
        logging_value=0.0033,
        difference=-0.0031,
        difference_low=-0.0045,
        difference_high=-0.0016,
        force=True,
    )

    assert decision.promote and decision.forced and not decision.passed
    text = format_decision(decision, 1, None)
    assert "FORCED PROMOTION" in text
    assert "worse than the logging policy" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"serving_version": None, "tolerance": -0.1}, "tolerance must be a fraction"),
        ({"serving_version": None, "tolerance": 1.0}, "tolerance must be a fraction"),
        ({"serving_version": 1}, "needs finite figures"),
        (
            {
                "serving_version": 1,
                "serving_value": 0.004,
                "difference": float("nan"),
                "difference_low": -0.001,
                "difference_high": 0.001,
            },
            "needs finite figures",
        ),
        (
            {"serving_version": None, "logging_value": 0.003},
            "comparing with the logging policy needs finite figures",
        ),
    ],
)
def test_gate_refuses_bad_inputs(kwargs, message):
    """Out-of-range tolerances and missing figures are errors, not decisions."""
    with pytest.raises(LearningError, match=message):
        decide_promotion(**kwargs)


# The pipeline, on a small slice of the real OBD log ---------------------------------


@pytest.fixture(scope="module")
def small_log():
    """The first 2,000 rows of OBD random/all (time order kept)."""
    return load_obd("random", "all").subset(slice(0, 2000))


@pytest.fixture
def store(tmp_path):
    """A weight store on fakeredis with its own key prefix."""
    settings = load_settings(
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        weights_hmac_key="p" * 32,
        state_dir=tmp_path / "state",
    )
    return WeightStore(fakeredis.FakeRedis(), settings)


def tiny_config(**changes) -> TrainConfig:
    """A training run that takes a second or two."""
    base = {"steps": 30, "batch_size": 64, "hidden": 16, "n_bootstrap": 50}
    base.update(changes)
    return TrainConfig(eval_every=10, **base)


def run(store, log, tmp_path, **kwargs):
    """Run the pipeline quietly on `log`."""
    return train_and_promote(
        store.settings,
        tiny_config(),
        store=store,
        log=log,
        out_dir=tmp_path / "out",
        progress=False,
        show=False,
        **kwargs,
    )


def test_pipeline_promotes_the_first_version_and_writes_its_report(
    store, small_log, tmp_path
):
    """Version 1 is published, serves, and carries its figures; files are written."""
    outcome = run(store, small_log, tmp_path)

    assert outcome.version == 1
    assert store.serving_version("content") == 1
    _, meta = store.load("content", 1, ContentQNet.INPUT_SCHEMA)
    assert meta["promotion"]["promote"] is True
    assert meta["promotion"]["serving_version"] is None
    assert meta["promotion"]["baseline"] == "logging"
    assert meta["promotion"]["logging_value"] == pytest.approx(
        float(small_log.rewards[1400:].mean())
    )
    assert set(meta["vs_logging"]) == {"logging_value", "ipw", "snipw", "dr"}
    assert meta["promotion"]["difference_low"] == meta["vs_logging"]["snipw"]["low"]
    assert meta["selection"]["n_validation"] == 280
    assert meta["ope"]["estimator"] == "snipw"
    assert meta["ope"]["low"] <= meta["ope"]["value"] <= meta["ope"]["high"]
    assert meta["data"]["n_train"] == 1400
    assert meta["network"] == {"class": "ContentQNet", "hidden": 16}
    report = json.loads(outcome.report_path.read_text())
    assert report["decision"]["promote"] is True
    assert outcome.curves_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "candidate" in outcome.table and "serving (none)" in outcome.table


def test_pipeline_compares_with_the_serving_version(store, small_log, tmp_path):
    """The second run is judged against version 1 by a paired bootstrap."""
    run(store, small_log, tmp_path)

    outcome = run(store, small_log, tmp_path)

    # Same data and seed give the same network: the difference is exactly 0,
    # which is not worse, so it passes.
    assert outcome.decision.serving_version == 1
    assert outcome.decision.difference == pytest.approx(0.0)
    assert outcome.decision.promote
    assert outcome.version == 2
    assert set(outcome.report["paired"]) == {"ipw", "snipw", "dr"}
    assert outcome.report["paired"]["snipw"]["n_bootstrap"] == 50
    assert "serving v1" in outcome.table


def test_pipeline_refuses_when_serving_cannot_be_judged_unless_forced(
    store, small_log, tmp_path, caplog, capsys
):
    """A tampered serving version blocks the gate; `force` publishes, loudly."""
    run(store, small_log, tmp_path)
    store.redis.append(store.blob_key("content", 1), b"\x00")

    refused = run(store, small_log, tmp_path)
    with caplog.at_level(logging.WARNING, logger="rl.promote"):
        forced = train_and_promote(
            store.settings,
            tiny_config(),
            store=store,
            log=small_log,
            out_dir=tmp_path / "out",
            progress=False,
            force=True,
        )

    assert not refused.decision.promote
    assert refused.version is None
    assert "cannot be evaluated" in refused.decision.reason
    assert forced.decision.forced and forced.version == 2
    assert store.serving_version("content") == 2
    assert any("FORCED promotion" in r.getMessage() for r in caplog.records)
    assert "FORCED PROMOTION" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--agent", "robot"], "invalid choice: 'robot'"),
        (["--estimator", "dm"], "invalid choice: 'dm'"),
        (["--campaign", "kids"], "invalid choice: 'kids'"),
    ],
)
def test_command_line_refuses_bad_options(argv, message, capsys):
    """argparse rejects unknown agents, estimators and campaigns by name."""
    with pytest.raises(SystemExit):
        main(argv)

    assert message in capsys.readouterr().err


# Budget's pacing gate -----------------------------------------------------------------


def test_paired_mean_bootstrap_centres_on_the_mean_difference():
    """The interval brackets the mean of the per-episode differences."""
    rng = np.random.default_rng(0)
    serving = rng.normal(1.0, 0.2, size=80)
    candidate = serving + 0.05 + rng.normal(0, 0.01, size=80)

    interval = paired_mean_bootstrap(candidate, serving, n_bootstrap=400)

    assert interval.estimate == pytest.approx(np.mean(candidate - serving))
    assert interval.low < interval.estimate < interval.high
    # Pairing removes the episode-to-episode swing: the interval is narrow.
    assert interval.high - interval.low < 0.02


@pytest.mark.parametrize(
    ("candidate", "serving"),
    [(np.ones(1), np.ones(1)), (np.ones(3), np.ones(4)), (np.ones((2, 2)), np.ones(4))],
)
def test_paired_mean_bootstrap_refuses_unpaired_values(candidate, serving):
    """The two arrays must pair up episode by episode."""
    with pytest.raises(LearningError, match="paired values must be two equal"):
        paired_mean_bootstrap(candidate, serving)


@pytest.mark.slow
def test_budget_pipeline_promotes_then_compares_pacers(store, tmp_path):
    """`--agent budget` publishes a pacer, then judges the next one against it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--agent", "budget", "--iterations", "2", "--n-bootstrap", "50",
         "--out", str(tmp_path)]
    )  # fmt: skip

    first = train_and_promote_budget(store.settings, args, store=store, show=False)
    serving_after_first = store.serving_version("budget")
    second = train_and_promote_budget(store.settings, args, store=store, show=False)

    assert first.version == 1 and serving_after_first == 1
    _, meta = store.load("budget", 1, PacingQNet.INPUT_SCHEMA)
    assert meta["b0"] > 0 and meta["slots"] >= 1
    assert meta["ope"]["low"] <= meta["ope"]["value"] <= meta["ope"]["high"]
    # Same seed, same pacer: the paired difference is exactly 0, which passes.
    assert second.decision.serving_version == 1
    assert second.decision.difference == pytest.approx(0.0)
    assert second.version == 2 and store.serving_version("budget") == 2
    assert "serving v1" in second.table


def test_pipeline_refuses_a_first_version_worse_than_logging(
    store, small_log, tmp_path
):
    """Without checkpoint selection the overfitted network loses to logging."""
    outcome = train_and_promote(
        store.settings,
        tiny_config(validation_fraction=0.0),
        store=store,
        log=small_log,
        out_dir=tmp_path / "out",
        progress=False,
        show=False,
    )

    assert not outcome.decision.promote
    assert outcome.version is None
    assert store.serving_version("content") is None
    assert "worse than the logging policy" in outcome.decision.reason
    assert outcome.report["selection"] is None
