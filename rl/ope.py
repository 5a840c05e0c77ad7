"""Off-policy evaluation: what would a policy's CTR have been on logged traffic?

Four estimators of the value `V(pi) = E[sum_a pi(a | x) q(x, a)]` of an evaluation
policy `pi`, from logs collected by another (logging) policy with known
propensities `pscore = pi_0(a_i | x_i)`:

- DM, the direct method: average the reward model's prediction under `pi`.
  Low variance, biased by whatever the model gets wrong.
- IPW, inverse propensity weighting: average `w_i r_i` with `w_i = pi(a_i | x_i) /
  pscore_i`. Unbiased, high variance when `pi` and `pi_0` disagree.
- SNIPW, self-normalised IPW: `sum w_i r_i / sum w_i`. Slightly biased, but
  bounded by the rewards and usually much less variable.
- DR, doubly robust: DM plus IPW on the model's residuals. Unbiased when either
  the propensities or the model are right.

Policies are given as action distributions, in one of two layouts:

- `(n, n_actions)`: one slot per round; `position` is not needed.
- `(n, n_actions, len_list)`: a slate of `len_list` positions, as in the Open
  Bandit Dataset, where each logged row is one (item, position) and `pscore` is the
  propensity of that item at that position. Row `i` is judged by
  `action_dist[i, :, position[i]]`, which must sum to 1 over actions. This is the
  Open Bandit Pipeline's convention, and what its published validation uses.

Reward predictions (`estimated_rewards`, for DM and DR) have the same shape as
`action_dist`. `RewardModel` is a small L2-regularised logistic regression that
produces them. Confidence intervals come from the percentile bootstrap over
logged rows; `paired_bootstrap_difference` compares two policies on the same
resamples, which is what the promotion gate needs (the noise of the shared
traffic cancels in the difference).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from ad_orchestrator.errors import LearningError

logger = logging.getLogger(__name__)

ESTIMATORS = ("dm", "ipw", "snipw", "dr")
NEEDS_MODEL = frozenset({"dm", "dr"})
_SUM_TOLERANCE = 1e-4
_CHUNK = 128  # bootstrap resamples evaluated per vectorised pass


# Inputs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rounds:
    """Validated inputs reduced to what every estimator needs, one value per row."""

    reward: np.ndarray  # (n,)
    weight: np.ndarray  # (n,) pi(a_i | x_i) / pscore_i
    dm: np.ndarray | None  # (n,) sum_a pi(a | x_i) q_hat(x_i, a)
    q_logged: np.ndarray | None  # (n,) q_hat(x_i, a_i)


def _as_1d(value: ArrayLike, name: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        expected = "(n_rounds,)" if n is None else f"({n},)"
        raise LearningError(
            f"`{name}` must be a 1-D array of shape {expected}, but got shape "
            f"{array.shape}"
        )
    return array


def _rounds(
    reward: ArrayLike,
    action: ArrayLike,
    pscore: ArrayLike,
    action_dist: ArrayLike,
    position: ArrayLike | None = None,
    estimated_rewards: ArrayLike | None = None,
) -> _Rounds:
    """Check the arrays against each other and reduce them to per-row terms."""
    reward_ = _as_1d(reward, "reward").astype(np.float64)
    n = reward_.shape[0]
    if n == 0:
        raise LearningError("`reward` is empty: there are no logged rounds")
    action_ = _as_1d(action, "action", n)
    if not np.issubdtype(action_.dtype, np.integer):
        raise LearningError(
            f"`action` must hold integer indices, but got dtype {action_.dtype}"
        )
    pscore_ = _as_1d(pscore, "pscore", n).astype(np.float64)
    if (pscore_ <= 0).any() or (pscore_ > 1).any():
        raise LearningError(
            "`pscore` must lie in (0, 1], but got values from "
            f"{pscore_.min()} to {pscore_.max()}"
        )
    dist = np.asarray(action_dist, dtype=np.float64)
    if dist.ndim not in (2, 3) or dist.shape[0] != n:
        raise LearningError(
            f"`action_dist` must have shape ({n}, n_actions) or ({n}, n_actions, "
            f"len_list), but got {dist.shape}"
        )
    n_actions = dist.shape[1]
    if action_.min() < 0 or action_.max() >= n_actions:
        raise LearningError(
            f"`action` must lie in [0, {n_actions}) to index `action_dist`, but got "
            f"values from {action_.min()} to {action_.max()}"
        )
    rows = np.arange(n)
    if dist.ndim == 3:
        if position is None:
            raise LearningError(
                "`position` is required when `action_dist` has a position axis "
                f"(shape {dist.shape}); pass the 0-based logged positions"
            )
        position_ = _as_1d(position, "position", n)
        if position_.min() < 0 or position_.max() >= dist.shape[2]:
            raise LearningError(
                f"`position` must lie in [0, {dist.shape[2]}) (0-based), but got "
                f"values from {position_.min()} to {position_.max()}"
            )
        per_row = dist[rows, :, position_]
    else:
        position_ = None
        per_row = dist
    if (per_row < 0).any():
        raise LearningError("`action_dist` must not hold negative probabilities")
    sums = per_row.sum(axis=1)
    if np.abs(sums - 1.0).max() > _SUM_TOLERANCE:
        bad = int(np.abs(sums - 1.0).argmax())
        raise LearningError(
            f"`action_dist` must sum to 1 over actions for each row (and position), "
            f"but row {bad} sums to {sums[bad]:.6f}"
        )
    weight = per_row[rows, action_] / pscore_
    if estimated_rewards is None:
        return _Rounds(reward_, weight, None, None)
    q_hat = np.asarray(estimated_rewards, dtype=np.float64)
    if q_hat.shape != dist.shape:
        raise LearningError(
            f"`estimated_rewards` must have the shape of `action_dist` {dist.shape}, "
            f"but got {q_hat.shape}"
        )
    q_row = q_hat[rows, :, position_] if position_ is not None else q_hat
    return _Rounds(
        reward_,
        weight,
        (per_row * q_row).sum(axis=1),
        q_row[rows, action_],
    )


def _check_estimator(estimator: str, rounds: _Rounds) -> None:
    if estimator not in ESTIMATORS:
        raise LearningError(
            f"`estimator` must be one of {ESTIMATORS}, but got {estimator!r}"
        )
    if estimator in NEEDS_MODEL and rounds.dm is None:
        raise LearningError(
            f"`estimated_rewards` is required by {estimator.upper()}; fit a "
            "`RewardModel` and pass its predictions"
        )


# Estimators over (many) resamples of the rows ---------------------------------------


def _estimate(estimator: str, rounds: _Rounds, rows: np.ndarray) -> np.ndarray:
    """Evaluate `estimator` on each row set of `rows`, shape `(n_sets, n)`."""
    if estimator == "ipw":
        return (rounds.weight * rounds.reward)[rows].mean(axis=1)
    if estimator == "snipw":
        numerator = (rounds.weight * rounds.reward)[rows].sum(axis=1)
        denominator = rounds.weight[rows].sum(axis=1)
        # A resample in which the policy never agrees with the log says nothing;
        # 0 is what IPW would say too.
        safe = np.where(denominator > 0, denominator, 1.0)
        return np.where(denominator > 0, numerator / safe, 0.0)
    if rounds.dm is None or rounds.q_logged is None:
        raise LearningError(f"`estimated_rewards` is required by {estimator.upper()}")
    if estimator == "dm":
        return rounds.dm[rows].mean(axis=1)
    residual = rounds.weight * (rounds.reward - rounds.q_logged)
    return (rounds.dm + residual)[rows].mean(axis=1)


def estimate_policy_value(
    estimator: str,
    *,
    reward: ArrayLike,
    action: ArrayLike,
    pscore: ArrayLike,
    action_dist: ArrayLike,
    position: ArrayLike | None = None,
    estimated_rewards: ArrayLike | None = None,
) -> float:
    """Estimate a policy's value with one estimator.

    Args:
        estimator: `dm`, `ipw`, `snipw` or `dr`.
        reward: `(n,)` logged rewards.
        action: `(n,)` logged action indices.
        pscore: `(n,)` logging propensities of the logged actions (and
            positions).
        action_dist: `(n, n_actions)` or `(n, n_actions, len_list)` evaluation
            policy.
        position: `(n,)` 0-based logged positions; required for the 3-D layout.
        estimated_rewards: Reward predictions shaped like `action_dist`;
            required by DM and DR.

    Returns:
        The estimated value (expected reward per round).

    Raises:
        LearningError: If an array has the wrong shape or values; the message
            names it.
    """
    rounds = _rounds(reward, action, pscore, action_dist, position, estimated_rewards)
    _check_estimator(estimator, rounds)
    everything = np.arange(rounds.reward.shape[0])[None]
    return float(_estimate(estimator, rounds, everything)[0])


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with its percentile-bootstrap confidence interval.

    Attributes:
        estimate: On all rows.
        mean: Mean over bootstrap resamples.
        low: The `alpha / 2` quantile of the resamples.
        high: The `1 - alpha / 2` quantile.
        alpha: One minus the confidence level.
        n_bootstrap: Number of resamples.
    """

    estimate: float
    mean: float
    low: float
    high: float
    alpha: float
    n_bootstrap: int

    def to_dict(self) -> dict[str, float | int]:
        """Return the interval as JSON-ready numbers."""
        return asdict(self)


def _bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_bootstrap: int,
    alpha: float,
    seed: int,
) -> Interval:
    if n_bootstrap < 1:
        raise LearningError(f"`n_bootstrap` must be at least 1, but got {n_bootstrap}")
    if not 0.0 < alpha < 1.0:
        raise LearningError(f"`alpha` must be in (0, 1), but got {alpha}")
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_bootstrap, _CHUNK):
        size = min(_CHUNK, n_bootstrap - start)
        draws.append(statistic(rng.integers(0, n, size=(size, n))))
    samples = np.concatenate(draws)
    return Interval(
        estimate=float(statistic(np.arange(n)[None])[0]),
        mean=float(samples.mean()),
        low=float(np.quantile(samples, alpha / 2)),
        high=float(np.quantile(samples, 1 - alpha / 2)),
        alpha=alpha,
        n_bootstrap=n_bootstrap,
    )


def estimate_interval(
    estimator: str,
    *,
    reward: ArrayLike,
    action: ArrayLike,
    pscore: ArrayLike,
    action_dist: ArrayLike,
    position: ArrayLike | None = None,
    estimated_rewards: ArrayLike | None = None,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Estimate a policy's value with a bootstrap confidence interval.

    Rows are resampled with replacement; the reward model is not refitted per
    resample, so the interval covers the sampling noise of the logged traffic
    given the model.

    Args:
        estimator: `dm`, `ipw`, `snipw` or `dr`.
        reward: See `estimate_policy_value`; likewise `action`, `pscore`,
            `action_dist`, `position` and `estimated_rewards`.
        n_bootstrap: Number of resamples.
        alpha: One minus the confidence level (0.05 for a 95% interval).
        seed: Seed of the resampling.

    Returns:
        The estimate and its interval.
    """
    rounds = _rounds(reward, action, pscore, action_dist, position, estimated_rewards)
    _check_estimator(estimator, rounds)
    return _bootstrap(
        lambda rows: _estimate(estimator, rounds, rows),
        rounds.reward.shape[0],
        n_bootstrap,
        alpha,
        seed,
    )


def paired_bootstrap_difference(
    candidate: ArrayLike,
    serving: ArrayLike,
    *,
    reward: ArrayLike,
    action: ArrayLike,
    pscore: ArrayLike,
    position: ArrayLike | None = None,
    estimated_rewards: ArrayLike | None = None,
    estimator: str = "snipw",
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Estimate `V(candidate) - V(serving)` with a paired bootstrap interval.

    Both policies are evaluated on the same resample each time, so the noise of
    the shared traffic cancels in the difference; a gate that promotes when
    `low >= -tolerance` promotes only candidates that are not worse beyond the
    tolerance at confidence `1 - alpha / 2`.

    Args:
        candidate: Action distribution of the new policy (`action_dist` layout).
        serving: Action distribution of the policy in service, same shape.
        reward: See `estimate_policy_value`; likewise `action`, `pscore`,
            `position` and `estimated_rewards`.
        estimator: `dm`, `ipw`, `snipw` or `dr`.
        n_bootstrap: Number of resamples.
        alpha: One minus the confidence level.
        seed: Seed of the resampling.

    Returns:
        The difference (candidate minus serving) and its interval.
    """
    if np.shape(candidate) != np.shape(serving):
        raise LearningError(
            f"`candidate` and `serving` must have the same shape, but got "
            f"{np.shape(candidate)} and {np.shape(serving)}"
        )
    new = _rounds(reward, action, pscore, candidate, position, estimated_rewards)
    old = _rounds(reward, action, pscore, serving, position, estimated_rewards)
    _check_estimator(estimator, new)
    return _bootstrap(
        lambda rows: _estimate(estimator, new, rows) - _estimate(estimator, old, rows),
        new.reward.shape[0],
        n_bootstrap,
        alpha,
        seed,
    )


def paired_bootstrap_against_logged(
    candidate: ArrayLike,
    *,
    reward: ArrayLike,
    action: ArrayLike,
    pscore: ArrayLike,
    position: ArrayLike | None = None,
    estimated_rewards: ArrayLike | None = None,
    estimator: str = "snipw",
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Estimate `V(candidate) - V(logging)` with a paired bootstrap interval.

    The logging policy's value is on-policy: the mean logged reward of the same
    resampled rows. Each resample evaluates the candidate's estimator and the
    logged mean on the same rows, so the traffic's noise cancels in the
    difference as in `paired_bootstrap_difference`. A candidate that serves the
    logging policy's own distribution gets exactly 0 under IPW and SNIPW.

    Args:
        candidate: Action distribution of the new policy (`action_dist` layout).
        reward: See `estimate_policy_value`; likewise `action`, `pscore`,
            `position` and `estimated_rewards`.
        estimator: `dm`, `ipw`, `snipw` or `dr`.
        n_bootstrap: Number of resamples.
        alpha: One minus the confidence level.
        seed: Seed of the resampling.

    Returns:
        The difference (candidate minus logging) and its interval.
    """
    new = _rounds(reward, action, pscore, candidate, position, estimated_rewards)
    _check_estimator(estimator, new)
    return _bootstrap(
        lambda rows: _estimate(estimator, new, rows) - new.reward[rows].mean(axis=1),
        new.reward.shape[0],
        n_bootstrap,
        alpha,
        seed,
    )


# The reward model -------------------------------------------------------------------


class RewardModel:
    """A logistic click model for DM and DR, additive in its inputs.

    `logit q(x, a, k) = b + ctx(x) + item(a) + id(a) + w_aff * affinity(x, a) +
    pos(k)`: a linear term of the context, one of the item's features, one per
    item id, one for the user's affinity to the item and one per position. Being
    additive, it predicts every (row, item, position) by broadcasting, never by
    building the `(n * n_actions * len_list, features)` matrix. It is fitted by
    L-BFGS on the log loss plus `l2 / 2 * |w|^2` (the intercept unpenalised).

    Contexts given to it should not encode the position themselves (the
    position has its own term).

    Args:
        l2: Strength of the L2 penalty on the summed log loss.
        len_list: Number of positions; 1 gives `(n, n_actions)` predictions.
    """

    def __init__(self, l2: float = 1.0, len_list: int = 1) -> None:
        if l2 < 0:
            raise LearningError(f"`l2` must be non-negative, but got {l2}")
        if len_list < 1:
            raise LearningError(f"`len_list` must be at least 1, but got {len_list}")
        self.l2 = l2
        self.len_list = len_list
        self.coef_: dict[str, np.ndarray] | None = None
        self.intercept_ = 0.0

    def _design(
        self,
        context: np.ndarray,
        action: np.ndarray,
        action_context: np.ndarray,
        affinity: np.ndarray | None,
        position: np.ndarray | None,
    ) -> tuple[np.ndarray, list[tuple[str, int]]]:
        n = context.shape[0]
        n_actions = action_context.shape[0]
        slot = np.zeros(n, dtype=np.int64) if position is None else position
        blocks = [
            ("context", context),
            ("item", action_context[action]),
            ("id", np.eye(n_actions)[action]),
            (
                "affinity",
                np.zeros((n, 1))
                if affinity is None
                else affinity[np.arange(n), action][:, None],
            ),
            (
                "position",
                np.eye(self.len_list)[slot],
            ),
        ]
        layout = [(name, block.shape[1]) for name, block in blocks]
        return np.hstack([b for _, b in blocks]).astype(np.float64), layout

    def fit(
        self,
        context: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        action_context: np.ndarray,
        *,
        affinity: np.ndarray | None = None,
        position: np.ndarray | None = None,
    ) -> RewardModel:
        """Fit the model to logged rows.

        Args:
            context: `(n, d_context)` context features (without position).
            action: `(n,)` logged action indices.
            reward: `(n,)` logged rewards in [0, 1].
            action_context: `(n_actions, d_item)` item features.
            affinity: `(n, n_actions)` user-item affinities, if any.
            position: `(n,)` 0-based positions; needed when `len_list > 1`.

        Returns:
            The fitted model.
        """
        reward = _as_1d(reward, "reward").astype(np.float64)
        n = reward.shape[0]
        if np.asarray(context).shape[0] != n:
            raise LearningError(
                f"`context` must have {n} rows like `reward`, but got "
                f"{np.asarray(context).shape[0]}"
            )
        if self.len_list > 1 and position is None:
            raise LearningError("`position` is required when `len_list` > 1")
        design, layout = self._design(
            np.asarray(context),
            _as_1d(action, "action", n),
            action_context,
            affinity,
            position,
        )
        mean = float(np.clip(reward.mean(), 1e-6, 1 - 1e-6))
        start = np.zeros(design.shape[1] + 1)
        start[-1] = special.logit(mean)

        def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = params[:-1], params[-1]
            z = design @ w + b
            # log(1 + e^z) - r z, written to stay finite for large |z|.
            value = np.logaddexp(0.0, z).sum() - reward @ z + 0.5 * self.l2 * w @ w
            residual = special.expit(z) - reward
            grad = np.append(design.T @ residual + self.l2 * w, residual.sum())
            return float(value), grad

        result = optimize.minimize(loss, start, jac=True, method="L-BFGS-B")
        if not result.success:
            logger.warning("reward model did not converge: %s", result.message)
        coef, at = {}, 0
        for name, width in layout:
            coef[name] = result.x[at : at + width]
            at += width
        self.coef_ = coef
        self.intercept_ = float(result.x[-1])
        return self

    def predict(
        self,
        context: np.ndarray,
        action_context: np.ndarray,
        *,
        affinity: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predict the click probability of every (row, item, position).

        Args:
            context: `(n, d_context)` context features, as in `fit`.
            action_context: `(n_actions, d_item)` item features.
            affinity: `(n, n_actions)` user-item affinities, if used in `fit`.

        Returns:
            `(n, n_actions, len_list)`, or `(n, n_actions)` when `len_list` is 1.
        """
        if self.coef_ is None:
            raise LearningError("the reward model is not fitted; call `fit` first")
        coef = self.coef_
        logit = (
            self.intercept_
            + (np.asarray(context) @ coef["context"])[:, None]
            + (action_context @ coef["item"] + coef["id"])[None, :]
        )
        if affinity is not None:
            logit = logit + coef["affinity"][0] * affinity
        logit = logit[:, :, None] + coef["position"][None, None, :]
        probs = special.expit(logit)
        return probs[:, :, 0] if self.len_list == 1 else probs
