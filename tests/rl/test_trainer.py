"""Tests of joint training and policy evaluation in `rl.trainer`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ad_orchestrator.errors import LearningError
from ad_orchestrator.features import ContextFields, encode_ads, encode_context
from ad_orchestrator.reducer import epsilon_greedy
from rl.envs.obd import USER_FEATURES, BanditLog
from rl.trainer import (
    _LEARNERS,
    NO_PREFERENCE,
    Checkpoint,
    DecisionRecord,
    TrainConfig,
    content_q_values,
    evaluate,
    no_preference_model,
    policy_action_dist,
    register_learner,
    select_checkpoint,
    served_probabilities,
    train,
    uniform_action_dist,
    unregister_learner,
)

N_ITEMS = 5
GROUPS = ("g0", "g1", "g2")
BEST = {"g0": 0, "g1": 2, "g2": 4}  # the item each user group clicks most


def synthetic_log(n: int = 3_000, seed: int = 0) -> tuple[BanditLog, np.ndarray]:
    """A uniformly logged bandit where the best item depends on the user group.

    Returns the log and the true `(n, N_ITEMS)` click probabilities.
    """
    rng = np.random.default_rng(seed)
    group = rng.integers(0, len(GROUPS), size=n)
    ctr = np.full((n, N_ITEMS), 0.05)
    ctr[np.arange(n), [BEST[GROUPS[g]] for g in group]] = 0.6
    actions = rng.integers(0, N_ITEMS, size=n)
    rewards = (rng.random(n) < ctr[np.arange(n), actions]).astype(np.float32)
    stamps = pd.date_range("2024-01-01", periods=n, freq="min").to_numpy()
    user = np.array([[GROUPS[g], "x", "y", "z"] for g in group])
    fields = [
        ContextFields(
            hour=pd.Timestamp(stamps[i]).hour,
            weekday=pd.Timestamp(stamps[i]).weekday(),
            device_class="unknown",
            country=None,
            position=1,
            user_features=dict(zip(USER_FEATURES, user[i].tolist(), strict=True)),
        )
        for i in range(n)
    ]
    items = tuple(
        {"item_feature_0": float(a), "item_feature_1": f"i{a}"} for a in range(N_ITEMS)
    )
    log = BanditLog(
        policy="random",
        campaign="synthetic",
        item_ids=np.arange(N_ITEMS),
        item_features=items,
        item_encodings=encode_ads(items),
        contexts=encode_context(fields),
        affinity=np.zeros((n, N_ITEMS), dtype=np.float32),
        actions=actions.astype(np.int64),
        rewards=rewards,
        pscore=np.full(n, 1 / N_ITEMS),
        positions=np.ones(n, dtype=np.int64),
        timestamps=stamps,
        user_features=user,
    )
    return log, ctr


@pytest.fixture(scope="module")
def data() -> tuple[BanditLog, np.ndarray]:
    """One synthetic log shared by the tests of this module."""
    return synthetic_log()


def quick(**overrides: object) -> TrainConfig:
    """A configuration small enough for a unit test."""
    settings = {
        "steps": 300,
        "batch_size": 64,
        "lr": 3e-3,
        "hidden": 32,
        "eval_every": 100,
        "n_bootstrap": 20,
        "seed": 1,
    } | overrides
    return TrainConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def spy_learner() -> Iterator[list[np.ndarray | None]]:
    """Register a learner that only records the rows it is given."""
    seen: list[np.ndarray | None] = []

    class Spy:
        name = "spy"

        def __init__(self, config: TrainConfig, record: DecisionRecord) -> None:
            self.model = nn.Linear(1, 1)

        def update(self, rows: np.ndarray | None, rng: np.random.Generator) -> float:
            seen.append(None if rows is None else rows.copy())
            return 0.0

    register_learner("spy", Spy)
    yield seen
    unregister_learner("spy")


def true_value(dist: np.ndarray, ctr: np.ndarray) -> float:
    """The exact expected click rate of a `(n, n_actions, 1)` policy."""
    return float((dist[:, :, 0] * ctr).sum(axis=1).mean())


def test_training_beats_random_on_synthetic_bandit(data) -> None:
    """A short run learns which item each group clicks, far above random."""
    log, ctr = data
    result = train(quick(), log=log, progress=False)
    test_rows = slice(int(round(log.n_rounds * 0.7)), None)
    test = log.subset(test_rows)
    learned = true_value(
        policy_action_dist(result.models["content"], test, 0.0), ctr[test_rows]
    )
    random = true_value(uniform_action_dist(test), ctr[test_rows])
    assert random == pytest.approx(0.16, abs=0.01)
    assert learned > 0.5
    estimate = result.report["ope"]["policy"]["snipw"]
    assert estimate["low"] > result.report["ope"]["logging_ctr"]["high"]


def test_history_records_loss_epsilon_and_ope(data) -> None:
    """Every update logs its loss and epsilon; OPE is estimated periodically."""
    log, _ = data
    result = train(quick(steps=200), log=log, progress=False)
    history = result.history
    assert len(history.loss["content"]) == 200
    assert history.epsilon["content"][0] == pytest.approx(0.5)
    assert history.epsilon["content"][-1] == pytest.approx(0.05)
    assert history.ope_step == [0, 100, 200]
    assert np.mean(history.loss["content"][-20:]) < np.mean(
        history.loss["content"][:20]
    )
    assert set(result.report) >= {"config", "data", "ope", "duration_s", "mode"}


def test_masked_items_are_never_served(data) -> None:
    """With the best items denied, the policy puts no probability on them."""
    log, _ = data
    masks = np.ones((log.n_rounds, N_ITEMS), dtype=bool)
    masks[:, [0, 2]] = False
    result = train(quick(steps=100), log=log, progress=False, masks=masks)
    dist = policy_action_dist(result.models["content"], log, 0.3, masks)
    assert dist[:, [0, 2], :].max() == 0.0
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)


def test_seeded_runs_are_reproducible(data) -> None:
    """The same seed gives the same losses and the same weights."""
    log, _ = data
    first = train(quick(steps=60, eval_every=0), log=log, progress=False)
    second = train(quick(steps=60, eval_every=0), log=log, progress=False)
    assert first.history.loss == second.history.loss
    for name, tensor in first.models["content"].state_dict().items():
        assert torch.equal(tensor, second.models["content"].state_dict()[name])


def test_joint_learners_share_rows_independent_do_not(data, spy_learner) -> None:
    """Jointly, every learner updates on the same rows; independently, not."""
    log, _ = data
    train(
        quick(steps=5, eval_every=0, agents=("content", "spy")), log=log, progress=False
    )
    assert all(rows is not None and rows.shape == (64,) for rows in spy_learner)
    spy_learner.clear()
    result = train(
        quick(steps=5, eval_every=0, agents=("content", "spy"), independent=True),
        log=log,
        progress=False,
    )
    assert spy_learner == [None] * 5  # the spy sampled on its own
    assert result.report["mode"] == "independent"
    assert set(result.models) == {"content", "spy"}


def test_evaluate_reports_logging_ctr_of_the_test_rows(data) -> None:
    """The logging CTR is the plain mean click of the rows evaluated on."""
    log, _ = data
    result = train(quick(steps=20, eval_every=0), log=log, progress=False)
    report = evaluate(result.models["content"], log, n_bootstrap=20)
    assert report["logging_ctr"]["estimate"] == pytest.approx(float(log.rewards.mean()))
    assert set(report["policy"]) == {"ipw", "snipw", "dr"}
    q = content_q_values(result.models["content"], log)
    assert q.shape == (log.n_rounds, N_ITEMS, 3)


def test_register_learner_refuses_duplicates() -> None:
    """A second learner under a taken name needs `replace=True`."""
    with pytest.raises(LearningError, match="already registered"):
        register_learner("content", _LEARNERS["content"])


def test_unregister_unknown_learner_is_named() -> None:
    """Removing a learner nobody registered says which ones exist."""
    with pytest.raises(LearningError, match="no learner named 'nobody'"):
        unregister_learner("nobody")


def test_unknown_agent_is_named(data) -> None:
    """Training an agent nobody registered lists the known ones."""
    log, _ = data
    with pytest.raises(LearningError, match="unregistered learners \\['budget'\\]"):
        train(quick(agents=("budget",)), log=log, progress=False)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("train_fraction", 1.0, "`train_fraction` must be in \\(0, 1\\)"),
        ("steps", 0, "`steps` must be at least 1"),
        ("lr", -1.0, "`lr` must be positive"),
        ("epsilon_fraction", 0.0, "`epsilon_fraction` must be in"),
        ("agents", (), "`agents` must be a non-empty tuple"),
        ("validation_fraction", 1.0, "`validation_fraction` must be in \\[0, 1\\)"),
        ("patience", 0, "`patience` must be at least 1"),
        ("select_estimator", "dm", "`select_estimator` must be in"),
        ("weight_decay", -1.0, "`weight_decay` must be non-negative"),
    ],
)
def test_config_rejects_bad_values(field: str, value: object, match: str) -> None:
    """Each bad setting is named in the error."""
    with pytest.raises(LearningError, match=match):
        TrainConfig(**{field: value})  # type: ignore[arg-type]


# The served policy matches the reducer ----------------------------------------------


def test_served_probabilities_share_the_greedy_mass_among_ties() -> None:
    """Ads tied at the top split 1 - epsilon, as `reducer.epsilon_greedy` does."""
    q = np.array([[0.2, 0.5, 0.5, 0.1], [0.3, 0.3, 0.3, 0.3]])
    probs = served_probabilities(q, 0.2)
    np.testing.assert_allclose(probs[0], [0.05, 0.45, 0.45, 0.05])
    np.testing.assert_allclose(probs[1], [0.25, 0.25, 0.25, 0.25])


def test_served_probabilities_are_the_reducer_propensities() -> None:
    """Every ad the reducer draws is logged with the probability we evaluate."""
    rng = np.random.default_rng(3)
    scores = np.array([0.1, 0.7, 0.7, 0.2, 0.05])
    expected = served_probabilities(scores[None], 0.1)[0]
    for _ in range(50):
        choice = epsilon_greedy(scores, 0.1, rng)
        assert choice.propensity == pytest.approx(expected[choice.index])


def test_served_probabilities_respect_masks() -> None:
    """A denied ad gets nothing even when it scores best."""
    q = np.array([[0.9, 0.1, 0.2]])
    probs = served_probabilities(q, 0.3, np.array([[False, True, True]]))
    np.testing.assert_allclose(probs, [[0.0, 0.15, 0.85]])


def test_no_preference_model_is_served_uniformly(data) -> None:
    """Constant Q-values tie every ad, so the served policy is the uniform one."""
    log, _ = data
    model = no_preference_model(hidden=16, value=0.01)
    q = content_q_values(model, log)
    assert np.all(q == np.float32(0.01))
    np.testing.assert_allclose(
        policy_action_dist(model, log, 0.05), uniform_action_dist(log)
    )


# Checkpoint selection ----------------------------------------------------------------


def point(label: str, low: float) -> Checkpoint:
    """A checkpoint whose interval is centred 0.001 above `low`."""
    return Checkpoint(label, 0, low + 0.001, low, low + 0.002)


@pytest.mark.parametrize(
    ("lows", "chosen"),
    [
        ([0.0, -0.003, -0.001, -0.002], 0),  # nothing beats no-preference
        ([0.0, -0.003, 0.002, 0.001], 2),  # training helped, then hurt
        ([0.0, 0.0, 0.0], 0),  # ties keep the earliest
        ([-0.001, -0.004, -0.0005], 2),
    ],
)
def test_select_checkpoint_keeps_the_highest_lower_bound(lows, chosen) -> None:
    """The best validation lower bound wins; ties keep the earlier checkpoint."""
    checkpoints = [point(f"c{i}", low) for i, low in enumerate(lows)]
    assert select_checkpoint(checkpoints) == chosen


def test_select_checkpoint_needs_candidates() -> None:
    """An empty list is an error that says so."""
    with pytest.raises(LearningError, match="at least one checkpoint"):
        select_checkpoint([])


def test_training_on_noise_keeps_the_no_preference_model(data) -> None:
    """Clicks independent of the ad: nothing beats uniform, training stops early."""
    log, _ = data
    rng = np.random.default_rng(7)
    noise = replace(log, rewards=(rng.random(log.n_rounds) < 0.1).astype(np.float32))
    config = quick(steps=2000, eval_every=100, patience=2, n_bootstrap=20)
    result = train(config, log=noise, progress=False)
    selection = result.report["selection"]
    assert selection["chosen"] == NO_PREFERENCE
    assert result.report["stopped_at"] is not None
    assert result.report["stopped_at"] < 2000
    trained = [p["low"] for p in selection["curve"][1:]]
    # It stopped `patience` evaluations after the best trained checkpoint.
    assert len(trained) - 1 - int(np.argmax(trained)) == config.patience
    assert selection["curve"][-1]["step"] == result.report["stopped_at"]
    validation = noise.subset(slice(1680, 2100))
    np.testing.assert_allclose(
        policy_action_dist(result.models["content"], validation, 0.05),
        uniform_action_dist(validation),
    )


def test_training_on_signal_keeps_a_trained_checkpoint(data) -> None:
    """With a clear signal the kept checkpoint beats logging on validation."""
    log, _ = data
    result = train(quick(), log=log, progress=False)
    selection = result.report["selection"]
    assert selection["chosen"] != NO_PREFERENCE
    assert selection["low"] > 0
    assert selection["n_validation"] == 420  # the last 20% of 2,100 training rows
    lows = [p["low"] for p in selection["curve"]]
    assert selection["low"] == max(lows)
