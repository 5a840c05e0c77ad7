"""Tests of the off-policy estimators in `rl.ope`."""

from __future__ import annotations

import numpy as np
import pytest

from ad_orchestrator.errors import LearningError
from rl.ope import (
    RewardModel,
    estimate_interval,
    estimate_policy_value,
    paired_bootstrap_difference,
)

CTR = np.array([0.1, 0.2, 0.3, 0.6])


def logged(n: int = 20_000, seed: int = 0) -> dict[str, np.ndarray]:
    """A uniformly random logging policy over four actions with known CTRs."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 4, size=n)
    return {
        "reward": (rng.random(n) < CTR[action]).astype(float),
        "action": action,
        "pscore": np.full(n, 0.25),
    }


def always(action: int, n: int, n_actions: int = 4) -> np.ndarray:
    """A deterministic policy's `(n, n_actions)` distribution."""
    dist = np.zeros((n, n_actions))
    dist[:, action] = 1.0
    return dist


@pytest.mark.parametrize("estimator", ["ipw", "snipw", "dm", "dr"])
def test_estimators_recover_known_value(estimator: str) -> None:
    """Each estimator finds the value of a policy whose true CTR is known."""
    data = logged()
    n = data["reward"].shape[0]
    policy = np.tile([0.0, 0.0, 0.5, 0.5], (n, 1))  # true value 0.45
    value = estimate_policy_value(
        estimator,
        **data,
        action_dist=policy,
        estimated_rewards=np.tile(CTR, (n, 1)),
    )
    assert value == pytest.approx(0.45, abs=0.02)


def test_doubly_robust_corrects_a_wrong_model() -> None:
    """With a biased reward model, DM is off but DR still finds the value."""
    data = logged(seed=1)
    n = data["reward"].shape[0]
    wrong = np.tile(CTR + 0.2, (n, 1))
    kwargs = {**data, "action_dist": always(3, n), "estimated_rewards": wrong}
    assert estimate_policy_value("dm", **kwargs) == pytest.approx(0.8)
    assert estimate_policy_value("dr", **kwargs) == pytest.approx(0.6, abs=0.03)


def test_position_axis_selects_each_rows_position() -> None:
    """With `(n, n_actions, len_list)`, row i is judged at its own position."""
    rng = np.random.default_rng(2)
    n = 30_000
    position = rng.integers(0, 2, size=n)
    action = rng.integers(0, 4, size=n)
    ctr = np.stack([CTR, CTR / 2], axis=1)  # position 1 halves every CTR
    reward = (rng.random(n) < ctr[action, position]).astype(float)
    dist = np.zeros((n, 4, 2))
    dist[:, 3, 0] = 1.0  # best item at the first position
    dist[:, 0, 1] = 1.0  # worst item at the second position
    truth = 0.5 * 0.6 + 0.5 * 0.05
    value = estimate_policy_value(
        "ipw",
        reward=reward,
        action=action,
        pscore=np.full(n, 0.25),
        action_dist=dist,
        position=position,
    )
    assert value == pytest.approx(truth, abs=0.02)


def test_interval_covers_truth_and_narrows_with_data() -> None:
    """The 95% interval contains the true value and shrinks with more rows."""
    widths = []
    for n in (2_000, 20_000):
        data = logged(n=n, seed=3)
        interval = estimate_interval(
            "snipw", **data, action_dist=always(3, n), n_bootstrap=300, seed=0
        )
        assert interval.low <= 0.6 <= interval.high
        assert interval.low <= interval.estimate <= interval.high
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2


def test_interval_is_reproducible_with_seed() -> None:
    """The same seed gives the same interval."""
    data = logged(n=1_000)
    first = estimate_interval("ipw", **data, action_dist=always(1, 1_000), seed=4)
    second = estimate_interval("ipw", **data, action_dist=always(1, 1_000), seed=4)
    assert first == second


def test_paired_difference_detects_better_candidate() -> None:
    """A better candidate's difference interval lies above 0; itself gives 0."""
    data = logged(n=5_000, seed=5)
    better, worse = always(3, 5_000), always(0, 5_000)
    gap = paired_bootstrap_difference(better, worse, **data, n_bootstrap=300)
    assert gap.low > 0.3
    same = paired_bootstrap_difference(worse, worse, **data, n_bootstrap=50)
    assert same.low == same.high == 0.0


def test_reward_model_learns_item_and_position_effects() -> None:
    """The click model ranks items and positions like the true CTRs."""
    rng = np.random.default_rng(6)
    n = 40_000
    action = rng.integers(0, 4, size=n)
    position = rng.integers(0, 2, size=n)
    ctr = np.stack([CTR, CTR / 2], axis=1)
    reward = (rng.random(n) < ctr[action, position]).astype(float)
    model = RewardModel(l2=1.0, len_list=2).fit(
        np.zeros((n, 1)), action, reward, np.zeros((4, 1)), position=position
    )
    predicted = model.predict(np.zeros((1, 1)), np.zeros((4, 1)))[0]
    assert predicted.shape == (4, 2)
    assert np.all(np.diff(predicted[:, 0]) > 0)
    assert np.all(predicted[:, 0] > predicted[:, 1])
    assert predicted[3, 0] == pytest.approx(0.6, abs=0.05)


N = 3
GOOD = {
    "reward": np.zeros(N),
    "action": np.array([0, 1, 0]),
    "pscore": np.full(N, 0.5),
    "action_dist": np.full((N, 2), 0.5),
}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"reward": np.zeros((N, 1))}, "`reward` must be a 1-D array"),
        ({"reward": np.zeros(0), "action": np.zeros(0, int)}, "`reward` is empty"),
        ({"action": np.array([0, 1])}, "`action` must be a 1-D array of shape"),
        ({"action": np.array([0.0, 1.0, 0.0])}, "`action` must hold integer"),
        ({"action": np.array([0, 2, 0])}, "`action` must lie in \\[0, 2\\)"),
        ({"pscore": np.array([0.5, 0.0, 0.5])}, "`pscore` must lie in \\(0, 1\\]"),
        ({"action_dist": np.full((N, 2, 2, 1), 0.5)}, "`action_dist` must have shape"),
        ({"action_dist": np.full((2, 2), 0.5)}, "`action_dist` must have shape"),
        ({"action_dist": np.full((N, 2), 0.4)}, "must sum to 1 over actions"),
        ({"action_dist": np.tile([1.5, -0.5], (N, 1))}, "negative probabilities"),
        ({"action_dist": np.full((N, 2, 2), 0.5)}, "`position` is required"),
        (
            {"action_dist": np.full((N, 2, 2), 0.5), "position": np.array([0, 2, 1])},
            "`position` must lie in",
        ),
        ({"estimated_rewards": np.zeros((N, 3))}, "`estimated_rewards` must have"),
        ({"estimator": "snips"}, "`estimator` must be one of"),
        ({"estimator": "dr"}, "`estimated_rewards` is required by DR"),
    ],
)
def test_bad_inputs_are_named(change: dict, match: str) -> None:
    """Every malformed argument raises an error that names it."""
    kwargs = {"estimator": "ipw", **GOOD, **change}
    with pytest.raises(LearningError, match=match):
        estimate_policy_value(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bootstrap": 0}, "`n_bootstrap` must be at least 1"),
        ({"alpha": 1.0}, "`alpha` must be in \\(0, 1\\)"),
    ],
)
def test_bad_bootstrap_settings_are_named(kwargs: dict, match: str) -> None:
    """Bootstrap settings out of range raise an error naming them."""
    with pytest.raises(LearningError, match=match):
        estimate_interval("ipw", **GOOD, **kwargs)


def test_paired_difference_needs_matching_shapes() -> None:
    """Candidate and serving distributions must have one shape."""
    with pytest.raises(LearningError, match="`candidate` and `serving` must have"):
        paired_bootstrap_difference(
            np.full((N, 2), 0.5),
            np.full((N, 3), 1 / 3),
            reward=GOOD["reward"],
            action=GOOD["action"],
            pscore=GOOD["pscore"],
        )
