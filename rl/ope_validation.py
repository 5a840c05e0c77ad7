"""Validate the OPE estimators with the Open Bandit Pipeline's own protocol.

The Open Bandit Dataset was logged by two policies on the same traffic in the same
week: uniform random and Bernoulli Thompson sampling (BTS). Because BTS served its
own share of traffic, its true CTR is known: the mean click of the bts log. The
protocol (Saito et al., 2021, section 5) estimates that CTR off-policy from the
random log alone and reports the relative error `|estimate - truth| / truth` over
bootstrap resamples of the random log; the reward model of DM and DR is refitted on
every resample.

BTS's action distribution. OBP obtains it by re-running BTS with ZOZOTOWN's
production prior (`obp.policy.BernoulliTS(is_zozotown_prior=True)`), which needs
that prior (shipped inside `obp`, which we do not depend on). We estimate it from
the bts log instead, as the empirical frequency of each (item, position):
`pi(a | k) = count(a, k) / count(k)`. Why this and not a posterior simulation:

- The truth is the CTR of what BTS *served that week*. The served (item, position)
  frequencies are an unbiased estimate of BTS's action distribution averaged over
  the week, which is exactly the policy whose CTR the bts log measures. BTS
  updated its posteriors in batches during the week, so its distribution moved;
  a single posterior fitted to the week's clicks describes BTS at the end of the
  week at best.
- Re-creating the posterior from the bts log alone would need the production
  prior (ours would start from Beta(1, 1)); with 42 clicks over 80 items the
  sample's posteriors are nearly flat and far from what BTS served.

The distribution is context-free, like OBP's, and the same for every row. Items
BTS never served at a position get probability 0 there (`smoothing` adds a
pseudo-count when set).

Run it with `python -m rl.ope_validation --output artifacts/ope_validation.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ad_orchestrator.errors import LearningError
from rl.envs.obd import BanditLog, load_obd, without_position
from rl.ope import ESTIMATORS, RewardModel, estimate_policy_value

logger = logging.getLogger(__name__)

# Relative errors OBP reports for this protocol on the small sample, campaign all.
PUBLISHED_RELATIVE_ERROR = {"dm": 0.157, "ipw": 0.311, "snipw": 0.312, "dr": 0.292}


def empirical_action_dist(log: BanditLog, smoothing: float = 0.0) -> np.ndarray:
    """Estimate a logging policy's `(n_actions, len_list)` action distribution.

    Args:
        log: The policy's own log.
        smoothing: Pseudo-count added to every (item, position) cell.

    Returns:
        Column `k` is the frequency of each item among rows shown at position
        `k + 1`; each column sums to 1.
    """
    if smoothing < 0:
        raise LearningError(f"`smoothing` must be non-negative, but got {smoothing}")
    counts = np.full((log.n_actions, log.len_list), smoothing, dtype=np.float64)
    np.add.at(counts, (log.actions, log.position_index), 1.0)
    totals = counts.sum(axis=0, keepdims=True)
    if (totals == 0).any():
        raise LearningError(
            "the log shows no item at some position; pass `smoothing` > 0"
        )
    return counts / totals


def fit_reward_model(log: BanditLog, l2: float = 1.0) -> RewardModel:
    """Fit the DM/DR click model on a log (context, item, affinity, position)."""
    return RewardModel(l2=l2, len_list=log.len_list).fit(
        without_position(log.contexts),
        log.actions,
        log.rewards,
        log.item_encodings[:, :-1],
        affinity=log.affinity,
        position=log.position_index,
    )


def predict_rewards(model: RewardModel, log: BanditLog) -> np.ndarray:
    """Return `(n, n_actions, len_list)` click predictions for every row."""
    return model.predict(
        without_position(log.contexts),
        log.item_encodings[:, :-1],
        affinity=log.affinity,
    )


def estimate_all(
    log: BanditLog, action_dist: np.ndarray, estimated_rewards: np.ndarray
) -> dict[str, float]:
    """Return every estimator's value of `action_dist` on `log`."""
    return {
        name: estimate_policy_value(
            name,
            reward=log.rewards,
            action=log.actions,
            pscore=log.pscore,
            action_dist=action_dist,
            position=log.position_index,
            estimated_rewards=estimated_rewards,
        )
        for name in ESTIMATORS
    }


@dataclass(frozen=True, kw_only=True)
class ValidationConfig:
    """Settings of one validation run."""

    campaign: str = "all"
    """OBD campaign: all, men or women."""
    n_runs: int = 100
    """Bootstrap resamples of the random log."""
    seed: int = 12345
    """Seed of the resampling."""
    l2: float = 1.0
    """L2 penalty of the reward model."""
    smoothing: float = 0.0
    """Pseudo-count of the empirical BTS distribution."""

    def __post_init__(self) -> None:
        if self.n_runs < 1:
            raise LearningError(f"`n_runs` must be at least 1, but got {self.n_runs}")


def run_validation(
    config: ValidationConfig,
    *,
    data_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the protocol and return the report (JSON-ready).

    Returns:
        `truth` (BTS's on-policy CTR), `full_sample` (each estimate on the whole
        random log), `relative_error` (mean and std per estimator over the
        resamples), the published figures and the settings.
    """
    random_log = load_obd("random", config.campaign, data_dir)
    bts_log = load_obd("bts", config.campaign, data_dir)
    truth = float(bts_log.rewards.mean())
    per_item = empirical_action_dist(bts_log, config.smoothing)

    def dist_for(log: BanditLog) -> np.ndarray:
        return np.broadcast_to(per_item, (log.n_rounds, *per_item.shape))

    model = fit_reward_model(random_log, config.l2)
    full = estimate_all(
        random_log, dist_for(random_log), predict_rewards(model, random_log)
    )

    rng = np.random.default_rng(config.seed)
    errors: dict[str, list[float]] = {name: [] for name in ESTIMATORS}
    for _ in tqdm(range(config.n_runs), disable=not progress, desc="ope runs"):
        n = random_log.n_rounds
        sample = random_log.subset(rng.integers(0, n, size=n))
        model = fit_reward_model(sample, config.l2)
        predictions = predict_rewards(model, sample)
        estimates = estimate_all(sample, dist_for(sample), predictions)
        for name, value in estimates.items():
            errors[name].append(abs(value - truth) / truth)

    report = {
        "protocol": "OBP: BTS value from random logs vs BTS on-policy CTR",
        "campaign": config.campaign,
        "bts_action_dist": "empirical (item, position) frequencies of the bts log",
        "n_runs": config.n_runs,
        "seed": config.seed,
        "l2": config.l2,
        "smoothing": config.smoothing,
        "truth": truth,
        "random_ctr": float(random_log.rewards.mean()),
        "full_sample": full,
        "relative_error": {
            name: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "published": PUBLISHED_RELATIVE_ERROR[name],
            }
            for name, values in errors.items()
        },
    }
    logger.info("OPE validation on %s: %s", config.campaign, report["relative_error"])
    return report


def format_table(report: dict[str, Any]) -> str:
    """Render the relative errors as a fixed-width table."""
    lines = [
        f"BTS on-policy CTR (truth) {report['truth']:.5f}; random-log CTR "
        f"{report['random_ctr']:.5f}; {report['n_runs']} bootstrap runs",
        f"{'estimator':<10}{'estimate':>10}{'rel. error':>12}{'std':>8}"
        f"{'published':>11}",
    ]
    for name, row in report["relative_error"].items():
        lines.append(
            f"{name.upper():<10}{report['full_sample'][name]:>10.5f}"
            f"{row['mean']:>12.3f}{row['std']:>8.3f}{row['published']:>11.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the validation from the command line; print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaign", default="all", choices=("all", "men", "women"))
    parser.add_argument("--n-runs", type=int, default=ValidationConfig.n_runs)
    parser.add_argument("--seed", type=int, default=ValidationConfig.seed)
    parser.add_argument("--l2", type=float, default=ValidationConfig.l2)
    parser.add_argument("--smoothing", type=float, default=0.0)
    parser.add_argument("--output", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")

    config = ValidationConfig(
        campaign=args.campaign,
        n_runs=args.n_runs,
        seed=args.seed,
        l2=args.l2,
        smoothing=args.smoothing,
    )
    report = run_validation(config, progress=True)
    print(format_table(report))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
