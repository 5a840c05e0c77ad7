"""`make train`: train, judge off-policy against the serving weights, promote or not.

The pipeline, top to bottom (`train_and_promote`):

1. Train the Content network with `rl.trainer.train` on the chosen log (the Open
   Bandit Dataset by default, or a log built from our own decision stream).
2. On the held-out, later part of that log, evaluate the candidate and the serving
   version (loaded from the weight store, signature checked) with the same
   estimators, the same reward model and the same bootstrap resamples.
3. The gate (`decide_promotion`): a paired bootstrap of (candidate - serving) on
   that split; the candidate promotes only when the lower end of the 95% interval
   is at least `-tolerance x serving value`, i.e. the data show it is not worse
   beyond the tolerance. With nothing serving, the first candidate is judged the
   same way against the logging policy (its observed CTR on that split, an
   on-policy value): the paired bootstrap of (candidate's estimator terms - the
   logged click) must not fall below `-tolerance x logging value`. `--force`
   promotes whatever the figures say, and says so loudly.
4. Publish the promoted weights with the figures and the decision in their signed
   metadata, move the serving pointer (workers swap between tasks), and write a
   JSON report and a PNG of the learning curves under `--out`.

Budget's pacing network (`--agent budget`) trains on the iPinYou auction log with
`rl.pacing.train_dqn_pacer` and goes through the same store; its gate compares
expected clicks on the evaluation episodes against the serving pacer.

Run it:

    python -m rl.promote --campaign all --policy random --steps 1500
    python -m rl.promote --force            # promote even if the gate refuses
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ad_orchestrator.errors import LearningError, WeightsError
from ad_orchestrator.settings import REPO_ROOT, Settings, load_settings
from ad_orchestrator.weights import WeightStore, open_store
from rl.envs.obd import BanditLog, load_obd, train_test_split
from rl.networks import ContentQNet
from rl.ope import (
    Interval,
    estimate_interval,
    paired_bootstrap_against_logged,
    paired_bootstrap_difference,
)
from rl.ope_validation import fit_reward_model, predict_rewards
from rl.trainer import (
    REPORTED,
    TrainConfig,
    TrainResult,
    evaluate,
    policy_action_dist,
    train,
)

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.05
DEFAULT_ESTIMATOR = "snipw"
DEFAULT_OUT = REPO_ROOT / "artifacts" / "train"
AGENTS = ("content", "budget")

_LOG_FORCED = (
    "FORCED promotion of agent=%s version=%s: the gate said %s (%s); --force "
    "overrode it"
)
_LOG_DECISION = "gate agent=%s promote=%s reason=%s"


# The gate ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GateDecision:
    """Whether a candidate may serve, and the figures behind the answer.

    Attributes:
        promote: The candidate becomes the serving version.
        passed: What the gate itself said (differs from `promote` when forced).
        forced: `--force` overrode a refusal.
        reason: One sentence, for the log, the console and the metadata.
        tolerance: Largest tolerated drop, as a fraction of the serving value.
        estimator: The OPE estimator the figures come from.
        serving_version: The version compared with, None when none served.
        serving_value: Its estimated value on the held-out split.
        baseline: What the candidate was compared with: `serving` (the serving
            version), `logging` (the logging policy, when nothing serves) or None
            (no figures: the first version promoted unjudged).
        logging_value: The logging policy's observed value (`baseline` logging).
        difference: Candidate minus the baseline (point estimate).
        difference_low: Lower end of the paired bootstrap interval.
        difference_high: Upper end of that interval.
        threshold: The lowest `difference_low` that passes.
    """

    promote: bool
    passed: bool
    forced: bool
    reason: str
    tolerance: float
    estimator: str
    serving_version: int | None = None
    serving_value: float | None = None
    baseline: str | None = None
    logging_value: float | None = None
    difference: float | None = None
    difference_low: float | None = None
    difference_high: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the decision as JSON-ready data."""
        return asdict(self)


def decide_promotion(
    *,
    serving_version: int | None,
    serving_value: float | None = None,
    difference: float | None = None,
    difference_low: float | None = None,
    difference_high: float | None = None,
    logging_value: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    estimator: str = DEFAULT_ESTIMATOR,
    force: bool = False,
) -> GateDecision:
    """Apply the promotion gate to the paired-bootstrap figures.

    The candidate passes when `difference_low >= -tolerance * |serving_value|`:
    the interval must show that it is not worse beyond the tolerance; merely
    failing to show that it is worse is not enough.

    With nothing serving, the same rule compares the candidate with the logging
    policy when `logging_value` is given (the difference figures are then
    candidate minus logging); without it (no figures at all) the first version
    promotes unjudged.

    Args:
        serving_version: The serving version; None when nothing serves.
        serving_value: The serving policy's estimated value.
        difference: Point estimate of candidate minus serving (or minus the
            logging policy when nothing serves).
        difference_low: Lower end of its confidence interval.
        difference_high: Upper end of its confidence interval.
        logging_value: The logging policy's observed value on the held-out
            split; used only when nothing serves.
        tolerance: Largest tolerated drop, a fraction in [0, 1) of the serving
            (or logging) value (0.05: a 5% lower CTR is tolerated).
        estimator: Name of the estimator, recorded with the decision.
        force: Promote whatever the figures say.

    Returns:
        The decision.

    Raises:
        LearningError: The tolerance is out of range, or a serving version (or
            a logging value) is given without finite figures.
    """
    if not 0.0 <= tolerance < 1.0:
        raise LearningError(
            f"tolerance must be a fraction in [0, 1) of the serving value, but got "
            f"{tolerance}; for example 0.05 tolerates a 5% lower estimated CTR"
        )
    common = {"tolerance": tolerance, "estimator": estimator}
    if serving_version is None and logging_value is None:
        return GateDecision(
            promote=True,
            passed=True,
            forced=False,
            reason="no version serves yet and no logging value was given, so the "
            "first candidate promotes unjudged",
            **common,  # type: ignore[arg-type]
        )
    first = serving_version is None
    base_value = logging_value if first else serving_value
    base_name = "logging policy" if first else "serving"
    figures = (base_value, difference, difference_low, difference_high)
    finite = [f for f in figures if f is not None and math.isfinite(f)]
    if len(finite) != len(figures):
        what = "the logging policy" if first else f"serving version {serving_version}"
        raise LearningError(
            f"comparing with {what} needs finite figures ({base_name} value, "
            f"difference and both ends of its interval), but got {figures}"
        )
    base_value, difference, difference_low, difference_high = finite
    threshold = -tolerance * abs(base_value)
    passed = difference_low >= threshold
    relation = ">=" if passed else "<"
    reason = (
        f"{estimator.upper()} difference lower bound {difference_low:+.6f} "
        f"{relation} threshold {threshold:+.6f} ({tolerance:.0%} of {base_name} "
        f"value {base_value:.6f})"
    )
    if first:
        reason = "no version serves yet, judged against the logging policy: " + reason
    if not passed:
        against = "the logging policy" if first else "serving"
        reason = f"candidate may be worse than {against}: " + reason
    return GateDecision(
        promote=passed or force,
        passed=passed,
        forced=force and not passed,
        reason=reason,
        serving_version=serving_version,
        serving_value=None if first else base_value,
        baseline="logging" if first else "serving",
        logging_value=base_value if first else None,
        difference=difference,
        difference_low=difference_low,
        difference_high=difference_high,
        threshold=threshold,
        **common,  # type: ignore[arg-type]
    )


# The pipeline -----------------------------------------------------------------------


@dataclass
class PromotionResult:
    """What `train_and_promote` did.

    Attributes:
        agent: The agent trained.
        decision: The gate's decision.
        version: The published version, None when the candidate was refused.
        report: Everything in the JSON report.
        report_path: Where the JSON report was written.
        curves_path: Where the learning-curve PNG was written.
        table: The printed OPE table.
    """

    agent: str
    decision: GateDecision
    version: int | None
    report: dict[str, Any]
    report_path: Path
    curves_path: Path
    table: str
    extra: dict[str, Any] = field(default_factory=dict)


def content_network(metadata: dict[str, Any]) -> ContentQNet:
    """Build the untrained `ContentQNet` that a version's tensors fit."""
    hidden = int(metadata.get("network", {}).get("hidden", 64))
    return ContentQNet(hidden=hidden)


def load_serving_content(
    store: WeightStore,
) -> tuple[int | None, ContentQNet | None, str | None]:
    """Load the serving Content network, verified.

    Returns:
        `(version, network, problem)`: the network is None when nothing serves or
        the serving version cannot be loaded, and then `problem` says why.
    """
    version = store.serving_version("content")
    if version is None:
        return None, None, None
    try:
        tensors, metadata = store.load("content", version, ContentQNet.INPUT_SCHEMA)
        net = content_network(metadata)
        net.load_state_dict(tensors, strict=True)
    except (WeightsError, RuntimeError) as exc:
        return version, None, str(exc)
    net.eval()
    return version, net, None


def _observed_ctr(rewards: np.ndarray, n_bootstrap: int, seed: int) -> dict[str, float]:
    # On-policy: every logged row counts with weight 1.
    n = rewards.shape[0]
    return estimate_interval(
        "ipw",
        reward=rewards,
        action=np.zeros(n, dtype=np.int64),
        pscore=np.ones(n),
        action_dist=np.ones((n, 1)),
        n_bootstrap=n_bootstrap,
        seed=seed,
    ).to_dict()


def _bts_reference(
    config: TrainConfig, n_bootstrap: int
) -> tuple[dict[str, float] | None, str | None]:
    try:
        bts = load_obd("bts", config.campaign)
    except LearningError as exc:
        return None, str(exc)
    _, held_out = train_test_split(bts, config.train_fraction)
    return _observed_ctr(held_out.rewards, n_bootstrap, config.seed), None


def train_and_promote(
    settings: Settings,
    config: TrainConfig,
    *,
    force: bool = False,
    tolerance: float | None = None,
    estimator: str = DEFAULT_ESTIMATOR,
    out_dir: Path | str = DEFAULT_OUT,
    store: WeightStore | None = None,
    log: BanditLog | None = None,
    masks: np.ndarray | None = None,
    data_description: dict[str, Any] | None = None,
    progress: bool = True,
    show: bool = True,
) -> PromotionResult:
    """Train the Content network, gate it against the serving one, maybe promote.

    Args:
        settings: Service settings (Redis, HMAC key, tolerance default).
        config: What to train on and how.
        force: Promote even when the gate refuses (logged as a WARNING and
            printed as a banner).
        tolerance: Largest tolerated drop as a fraction of the serving value;
            `settings.promote_tolerance` or 0.05 when None.
        estimator: Estimator of the gate: `ipw`, `snipw` or `dr`.
        out_dir: Where the JSON report and the PNG go.
        store: The weight store; one on the settings' Redis when None.
        log: Training data; the OBD log of `config.policy`/`config.campaign` when
            None (the retrain task passes a log built from our decision stream).
        masks: `(n, n_actions)` allowed ads of `log`'s rows, None: all allowed.
        data_description: What `log` is, for the metadata (with `log`).
        progress: Show the training progress bar.
        show: Print the OPE table and the decision.

    Returns:
        What happened, with the paths of the report and the PNG.
    """
    started = time.perf_counter()
    if estimator not in REPORTED:
        raise LearningError(
            f"estimator must be one of {REPORTED}, but got {estimator!r}"
        )
    tolerance = _tolerance(settings, tolerance)
    if config.epsilon_end != settings.epsilon:
        # The reducer serves epsilon-greedy with `settings.epsilon`: judge that.
        config = replace(config, epsilon_end=settings.epsilon)
    store = store or open_store(settings)
    out = Path(out_dir)
    from_obd = log is None
    log = log if log is not None else load_obd(config.policy, config.campaign)

    # Train ----------------------------------------------------------------------
    result = train(config, log, progress=progress, masks=masks)
    candidate: ContentQNet = result.models["content"]  # type: ignore[assignment]
    candidate.eval()

    # Evaluate candidate and serving alike on the held-out split -----------------
    train_log, test_log = train_test_split(log, config.train_fraction)
    test_masks = None if masks is None else masks[train_log.n_rounds :]
    reward_model = fit_reward_model(train_log)
    estimated_rewards = predict_rewards(reward_model, test_log)
    same = {
        "epsilon": config.epsilon_end,
        "reward_model": reward_model,
        "masks": test_masks,
        "n_bootstrap": config.n_bootstrap,
        "seed": config.seed,
    }
    candidate_ope = evaluate(candidate, test_log, **same)  # type: ignore[arg-type]
    serving_version, serving_net, problem = load_serving_content(store)
    serving_ope = (
        evaluate(serving_net, test_log, **same)  # type: ignore[arg-type]
        if serving_net is not None
        else None
    )
    references: dict[str, dict[str, float] | None] = {
        f"{log.policy} logging policy (observed CTR)": candidate_ope["logging_ctr"]
    }
    if from_obd:
        bts, bts_problem = _bts_reference(config, config.n_bootstrap)
        if bts_problem:
            logger.warning("no BTS reference: %s", bts_problem)
        if log.policy != "bts":
            references["bts logging policy (observed CTR)"] = bts

    # Candidate against the logging policy (on-policy CTR of the same rows) -------
    new_dist = policy_action_dist(candidate, test_log, config.epsilon_end, test_masks)
    evidence: dict[str, Any] = {
        "reward": test_log.rewards,
        "action": test_log.actions,
        "pscore": test_log.pscore,
        "position": test_log.position_index,
        "estimated_rewards": estimated_rewards,
        "n_bootstrap": config.n_bootstrap,
        "seed": config.seed,
    }
    vs_logging = {
        name: paired_bootstrap_against_logged(new_dist, estimator=name, **evidence)
        for name in REPORTED
    }
    logging_value = float(test_log.rewards.mean())

    # Gate -------------------------------------------------------------------------
    paired = None
    paired_all: dict[str, Interval] = {}
    if problem is not None:
        decision = GateDecision(
            promote=force,
            passed=False,
            forced=force,
            reason=f"serving version {serving_version} cannot be evaluated: {problem}",
            tolerance=tolerance,
            estimator=estimator,
            serving_version=serving_version,
        )
    elif serving_net is None or serving_ope is None:
        # Nothing serves: the first version must not be worse than the logging
        # policy, by the same paired bootstrap and tolerance.
        paired = vs_logging[estimator]
        decision = decide_promotion(
            serving_version=None,
            logging_value=logging_value,
            difference=paired.estimate,
            difference_low=paired.low,
            difference_high=paired.high,
            tolerance=tolerance,
            estimator=estimator,
            force=force,
        )
    else:
        old_dist = policy_action_dist(
            serving_net, test_log, config.epsilon_end, test_masks
        )
        # Every estimator's paired difference goes in the report; the gate reads
        # the chosen one.
        paired_all = {
            name: paired_bootstrap_difference(
                new_dist,
                old_dist,
                reward=test_log.rewards,
                action=test_log.actions,
                pscore=test_log.pscore,
                position=test_log.position_index,
                estimated_rewards=estimated_rewards,
                estimator=name,
                n_bootstrap=config.n_bootstrap,
                seed=config.seed,
            )
            for name in REPORTED
        }
        paired = paired_all[estimator]
        decision = decide_promotion(
            serving_version=serving_version,
            serving_value=serving_ope["policy"][estimator]["estimate"],
            difference=paired.estimate,
            difference_low=paired.low,
            difference_high=paired.high,
            tolerance=tolerance,
            estimator=estimator,
            force=force,
        )

    # Publish ------------------------------------------------------------------------
    data = data_description or {
        "source": "obd" if from_obd else "log",
        "policy": log.policy,
        "campaign": log.campaign,
    }
    data = {
        **data,
        "n_train": train_log.n_rounds,
        "n_test": test_log.n_rounds,
        "train_until": str(train_log.timestamps[-1]),
        "test_from": str(test_log.timestamps[0]),
        "test_until": str(test_log.timestamps[-1]),
    }
    gate = decision.to_dict()
    candidate_summary = {
        "estimator": estimator,
        "value": candidate_ope["policy"][estimator]["estimate"],
        "low": candidate_ope["policy"][estimator]["low"],
        "high": candidate_ope["policy"][estimator]["high"],
        "all": candidate_ope["policy"],
        "epsilon": config.epsilon_end,
        "n_test": test_log.n_rounds,
    }
    version = None
    if decision.promote:
        version = store.publish(
            "content",
            candidate.state_dict(),
            {
                "input_schema": ContentQNet.INPUT_SCHEMA,
                "network": {"class": "ContentQNet", "hidden": config.hidden},
                "data": data,
                "ope": candidate_summary,
                "serving_ope": (
                    {"version": serving_version, **serving_ope["policy"]}
                    if serving_ope
                    else None
                ),
                "paired": {k: v.to_dict() for k, v in paired_all.items()} or None,
                "vs_logging": {
                    "logging_value": logging_value,
                    **{k: v.to_dict() for k, v in vs_logging.items()},
                },
                "selection": result.report.get("selection"),
                "promotion": gate,
                "training": {
                    "config": _jsonable(asdict(config)),
                    "duration_s": result.report["duration_s"],
                },
            },
        )
        store.set_serving("content", version)
    if decision.forced:
        logger.warning(_LOG_FORCED, "content", version, "REFUSE", decision.reason)
    logger.info(_LOG_DECISION, "content", decision.promote, decision.reason)

    # Report ---------------------------------------------------------------------------
    table = format_ope_table(
        candidate_ope["policy"],
        serving_version,
        serving_ope["policy"] if serving_ope else None,
        references,
        title=(
            f"OPE on the held-out {test_log.n_rounds} rows of {log.policy}/"
            f"{log.campaign} ({data['test_from']} .. {data['test_until']}), "
            f"epsilon {config.epsilon_end}, {config.n_bootstrap} bootstrap "
            "resamples, 95% intervals"
        ),
    )
    report = {
        "agent": "content",
        "version": version,
        "decision": gate,
        "paired": {k: v.to_dict() for k, v in paired_all.items()} or None,
        "vs_logging": {
            "logging_value": logging_value,
            **{k: v.to_dict() for k, v in vs_logging.items()},
        },
        "selection": result.report.get("selection"),
        "candidate": candidate_ope,
        "serving": {"version": serving_version, "ope": serving_ope},
        "references": references,
        "data": data,
        "training": _jsonable(result.report),
        "history": result.history.to_dict(),
        "duration_s": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "content_report.json"
    report_path.write_text(json.dumps(_jsonable(report), indent=2))
    curves_path = plot_learning_curves(
        result, out / "content_learning_curves.png", references
    )
    if show:
        print(table)
        selection = result.report.get("selection")
        if selection:
            print(format_selection(selection))
        gating = "logging" if decision.baseline == "logging" else "serving"
        for name, interval in vs_logging.items():
            if gating != "logging" or name != estimator:
                print(
                    f"candidate - logging policy ({name.upper()}, paired bootstrap, "
                    f"not gating): {interval.estimate:+.6f} "
                    f"[{interval.low:+.6f}, {interval.high:+.6f}]"
                )
        for name, interval in paired_all.items():
            if name != estimator:
                print(
                    f"candidate - serving v{serving_version} ({name.upper()}, paired "
                    f"bootstrap, not gating): {interval.estimate:+.6f} "
                    f"[{interval.low:+.6f}, {interval.high:+.6f}]"
                )
        print(format_decision(decision, version, paired))
        print(f"report: {report_path}\ncurves: {curves_path}")
    return PromotionResult(
        agent="content",
        decision=decision,
        version=version,
        report=report,
        report_path=report_path,
        curves_path=curves_path,
        table=table,
    )


def _tolerance(settings: Settings, tolerance: float | None) -> float:
    if tolerance is not None:
        return tolerance
    configured = getattr(settings, "promote_tolerance", None)
    return DEFAULT_TOLERANCE if configured is None else float(configured)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


# Printing and pictures ------------------------------------------------------------


def _interval(values: dict[str, float] | None) -> str:
    if not values:
        return "-"
    return f"{values['estimate']:.5f} [{values['low']:.5f}, {values['high']:.5f}]"


def format_ope_table(
    candidate: dict[str, dict[str, float]],
    serving_version: int | None,
    serving: dict[str, dict[str, float]] | None,
    references: dict[str, dict[str, float] | None],
    *,
    title: str,
) -> str:
    """Render estimated CTRs with their 95% intervals as an aligned table.

    Args:
        candidate: Per estimator, the candidate's interval (`Interval.to_dict`).
        serving_version: The serving version, None when none serves.
        serving: Per estimator, the serving policy's interval, or None.
        references: Observed CTRs of logging policies, by label.
        title: The first line.
    """
    columns = [name.upper() for name in REPORTED] + ["observed CTR"]
    rows = [["policy", *columns]]
    rows.append(["candidate", *(_interval(candidate.get(n)) for n in REPORTED), "-"])
    label = f"serving v{serving_version}" if serving_version else "serving (none)"
    serving = serving or {}
    rows.append([label, *(_interval(serving.get(n)) for n in REPORTED), "-"])
    for name, values in references.items():
        rows.append([name, *("-" for _ in REPORTED), _interval(values)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [title]
    for index, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_decision(
    decision: GateDecision, version: int | None, paired: Any | None
) -> str:
    """Render the gate's decision, with a banner when `--force` overrode it."""
    lines = []
    if paired is not None:
        against = (
            "logging policy"
            if decision.baseline == "logging"
            else f"serving v{decision.serving_version}"
        )
        lines.append(
            f"candidate - {against} "
            f"({decision.estimator.upper()}, paired bootstrap): "
            f"{paired.estimate:+.6f} [{paired.low:+.6f}, {paired.high:+.6f}], "
            f"threshold {decision.threshold:+.6f}"
        )
    verdict = "PROMOTED" if decision.promote else "REFUSED"
    where = f" as version {version}" if version is not None else ""
    lines.append(f"gate: {verdict}{where}: {decision.reason}")
    if decision.forced:
        bar = "!" * 78
        lines = [
            bar,
            "!!  FORCED PROMOTION: the gate REFUSED this candidate and --force",
            "!!  published it anyway. Roll back with `adorch weights rollback`.",
            bar,
            *lines,
        ]
    return "\n".join(lines)


def format_selection(selection: dict[str, Any]) -> str:
    """Render the checkpoint selection on the validation slice in a few lines."""
    curve = selection.get("curve", [])
    points = ", ".join(f"{p['label']} {p['low']:+.5f}" for p in curve)
    return (
        f"checkpoint: {selection['chosen']} chosen on the validation slice "
        f"({selection['n_validation']} rows before the test split, "
        f"{selection['estimator'].upper()} - logged click, paired lower bound "
        f"{selection['low']:+.6f}); {len(curve)} checkpoints, "
        f"{selection['reason']}\nvalidation lower bounds: {points}"
    )


def plot_learning_curves(
    result: TrainResult,
    path: Path,
    references: dict[str, dict[str, float] | None] | None = None,
) -> Path:
    """Draw loss and epsilon, the validation selection, and held-out OPE."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    history = result.history
    figure, (loss_ax, val_ax, ope_ax) = plt.subplots(1, 3, figsize=(16, 4))
    for agent, losses in history.loss.items():
        steps = np.asarray(history.step[agent])
        values = np.asarray(losses)
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        loss_ax.plot(steps, values, alpha=0.25, label=f"{agent} loss")
        loss_ax.plot(steps[window - 1 :], smooth, label=f"{agent} loss (mean {window})")
    loss_ax.set_xlabel("gradient step")
    loss_ax.set_ylabel("Huber loss")
    loss_ax.set_yscale("log")
    eps_ax = loss_ax.twinx()
    for agent, epsilons in history.epsilon.items():
        eps_ax.plot(history.step[agent], epsilons, "k--", lw=1, label="epsilon")
    eps_ax.set_ylabel("epsilon")
    loss_ax.legend(loc="upper right", fontsize=8)
    for name, estimates in history.ope.items():
        if estimates:
            ope_ax.plot(history.ope_step, estimates, marker="o", label=name.upper())
    styles = iter([("gray", ":"), ("tab:red", "--"), ("tab:green", "-.")])
    for label, ref in (references or {}).items():
        color, style = next(styles, ("black", ":"))
        if ref:
            ope_ax.axhline(ref["estimate"], ls=style, lw=1, label=label, color=color)
    selection = result.report.get("selection")
    if selection:
        curve = selection["curve"]
        trained = [p for p in curve if p["step"] >= 0]
        at = [p["step"] for p in trained]
        val_ax.plot(at, [p["estimate"] for p in trained], marker="o", label="point")
        val_ax.fill_between(
            at,
            [p["low"] for p in trained],
            [p["high"] for p in trained],
            alpha=0.2,
            label="95% paired interval",
        )
        val_ax.axhline(0.0, color="gray", ls=":", lw=1, label="no-preference")
        val_ax.set_title(f"kept: {selection['chosen']}", fontsize=9)
        val_ax.legend(fontsize=8)
    val_ax.set_xlabel("gradient step")
    val_ax.set_ylabel("validation: policy - logging (CTR)")
    ope_ax.set_xlabel("gradient step")
    ope_ax.set_ylabel("held-out estimated CTR (report only)")
    ope_ax.legend(fontsize=8)
    figure.suptitle("Content Q-network training")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# Budget ------------------------------------------------------------------------------


def paired_mean_bootstrap(
    candidate: np.ndarray,
    serving: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Interval:
    """Bootstrap the mean of paired differences (one pair per evaluation episode).

    Args:
        candidate: `(n,)` the candidate's value per episode.
        serving: `(n,)` the serving policy's value on the same episodes.
        n_bootstrap: Resamples of the episodes.
        alpha: One minus the confidence level.
        seed: Seed of the resampling.
    """
    new, old = np.asarray(candidate, float), np.asarray(serving, float)
    if new.ndim != 1 or new.shape != old.shape or new.size < 2:
        raise LearningError(
            f"paired values must be two equal (n,) arrays with n >= 2, but got "
            f"{np.shape(candidate)} and {np.shape(serving)}"
        )
    difference = new - old
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, difference.size, size=(n_bootstrap, difference.size))
    samples = difference[rows].mean(axis=1)
    return Interval(
        estimate=float(difference.mean()),
        mean=float(samples.mean()),
        low=float(np.quantile(samples, alpha / 2)),
        high=float(np.quantile(samples, 1 - alpha / 2)),
        alpha=alpha,
        n_bootstrap=n_bootstrap,
    )


def _episode_values(run: Any, n_bootstrap: int, seed: int) -> dict[str, Any]:
    value = paired_mean_bootstrap(
        run.expected_clicks, np.zeros_like(run.expected_clicks),
        n_bootstrap=n_bootstrap, seed=seed,
    )  # fmt: skip
    summary = run.summary()
    return {
        "expected_clicks": value.to_dict(),
        "clicks": int(summary.clicks),
        "spend_share": float(summary.spend / summary.budget) if summary.budget else 0,
        "win_rate": float(summary.win_rate),
        "episodes": int(summary.episodes),
    }


def load_serving_pacer(
    store: WeightStore, env: Any, mean_pctr: float
) -> tuple[int | None, Any | None, str | None]:
    """Load the serving pacing network as a bidder, verified.

    Returns:
        `(version, bidder, problem)` as `load_serving_content` does.
    """
    from rl.pacing import DQNPacingBidder, PacingQNet

    version = store.serving_version("budget")
    if version is None:
        return None, None, None
    try:
        tensors, meta = store.load("budget", version, PacingQNet.INPUT_SCHEMA)
        net = PacingQNet(int(meta.get("config", {}).get("hidden", 64)))
        net.load_state_dict(tensors, strict=True)
        bidder = DQNPacingBidder(
            net.eval(), float(meta["b0"]), mean_pctr, int(meta["slots"])
        )
    except (WeightsError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        return version, None, f"{type(exc).__name__}: {exc}"
    return version, bidder, None


def train_and_promote_budget(
    settings: Settings,
    args: argparse.Namespace,
    *,
    store: WeightStore | None = None,
    show: bool = True,
) -> PromotionResult:
    """Train Budget's pacing network on iPinYou and gate it like the Content one.

    The candidate and the serving pacer replay the same evaluation episodes (the
    later half of the log, never trained on); the gate is the paired bootstrap over
    episodes of the expected clicks won (sum of pCTR over impressions bought).
    """
    from rl.envs.auction import AuctionEnv, load_ipinyou
    from rl.pacing import (
        LinearBidder,
        PacerTrainingConfig,
        train_dqn_pacer,
        tune_linear,
    )
    from rl.pacing_report import parse_c0

    started = time.perf_counter()
    tolerance = _tolerance(settings, args.tolerance)
    store = store or open_store(settings)
    out = Path(args.out)

    # Train on the first half of the log -----------------------------------------
    env = AuctionEnv(load_ipinyou(), parse_c0(args.c0))
    mean_pctr = env.mean_pctr("train")
    b0 = tune_linear(env).params["b0"]
    config = PacerTrainingConfig(
        seed=args.seed, iterations=args.iterations, hidden=args.hidden
    )
    training = train_dqn_pacer(env, b0, config)

    # Replay candidate, serving and linear on the evaluation episodes -------------
    episodes = env.episodes("eval")
    candidate_run = env.run(training.bidder(mean_pctr), episodes)
    linear_run = env.run(LinearBidder(b0, mean_pctr), episodes)
    serving_version, serving_bidder, problem = load_serving_pacer(store, env, mean_pctr)
    serving_run = (
        env.run(serving_bidder, episodes) if serving_bidder is not None else None
    )
    n_boot, seed = args.n_bootstrap, args.seed
    candidate_figures = _episode_values(candidate_run, n_boot, seed)
    figures = {
        "candidate": candidate_figures,
        "serving": _episode_values(serving_run, n_boot, seed) if serving_run else None,
        "linear": _episode_values(linear_run, n_boot, seed),
    }

    # Gate -------------------------------------------------------------------------
    paired = None
    if problem is not None:
        decision = GateDecision(
            promote=args.force,
            passed=False,
            forced=args.force,
            reason=f"serving version {serving_version} cannot be evaluated: {problem}",
            tolerance=tolerance,
            estimator="replay",
            serving_version=serving_version,
        )
    elif serving_run is None:
        decision = decide_promotion(
            serving_version=None,
            tolerance=tolerance,
            estimator="replay",
            force=args.force,
        )
    else:
        paired = paired_mean_bootstrap(
            candidate_run.expected_clicks,
            serving_run.expected_clicks,
            n_bootstrap=n_boot,
            seed=seed,
        )
        decision = decide_promotion(
            serving_version=serving_version,
            serving_value=float(serving_run.expected_clicks.mean()),
            difference=paired.estimate,
            difference_low=paired.low,
            difference_high=paired.high,
            tolerance=tolerance,
            estimator="replay",
            force=args.force,
        )

    # Publish ------------------------------------------------------------------------
    value = candidate_figures["expected_clicks"]
    version = None
    if decision.promote:
        version = store.publish(
            "budget",
            training.net.state_dict(),
            {
                **_jsonable(training.metadata(env)),
                "network": {"class": "PacingQNet", "hidden": config.hidden},
                "data": {
                    "source": "ipinyou/2997",
                    "c0": env.c0,
                    "train_episodes": int(env.episodes("train").size),
                    "eval_episodes": int(episodes.size),
                },
                "ope": {
                    "estimator": "replay expected clicks per episode",
                    "value": value["estimate"],
                    "low": value["low"],
                    "high": value["high"],
                    "all": _jsonable(figures),
                },
                "paired": paired.to_dict() if paired else None,
                "promotion": decision.to_dict(),
            },
        )
        store.set_serving("budget", version)
    if decision.forced:
        logger.warning(_LOG_FORCED, "budget", version, "REFUSE", decision.reason)
    logger.info(_LOG_DECISION, "budget", decision.promote, decision.reason)

    # Report -------------------------------------------------------------------------
    table = format_pacing_table(
        figures,
        serving_version,
        title=(
            f"Pacing replay on the {episodes.size} evaluation episodes of iPinYou "
            f"2997 (c0 {args.c0}, {n_boot} bootstrap resamples, 95% intervals)"
        ),
    )
    report = {
        "agent": "budget",
        "version": version,
        "decision": decision.to_dict(),
        "paired": paired.to_dict() if paired else None,
        "figures": figures,
        "serving": {"version": serving_version, "problem": problem},
        "training": {
            "losses": training.losses,
            "gains": training.gains,
            "seconds": training.seconds,
            "b0": b0,
            "config": asdict(config),
        },
        "duration_s": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "budget_report.json"
    report_path.write_text(json.dumps(_jsonable(report), indent=2))
    curves_path = _plot_pacer(training, out / "budget_learning_curves.png")
    if show:
        print(table)
        print(format_decision(decision, version, paired))
        print(f"report: {report_path}\ncurves: {curves_path}")
    return PromotionResult(
        agent="budget",
        decision=decision,
        version=version,
        report=report,
        report_path=report_path,
        curves_path=curves_path,
        table=table,
    )


def format_pacing_table(
    figures: dict[str, dict[str, Any] | None],
    serving_version: int | None,
    *,
    title: str,
) -> str:
    """Render the pacers' replay results as an aligned table."""
    header = ["pacer", "expected clicks / episode [95% CI]", "clicks", "spend/budget"]
    rows = [header]
    serving = f"serving v{serving_version}" if serving_version else "serving (none)"
    labels = {
        "candidate": "candidate (DQN)",
        "serving": serving,
        "linear": "linear bidding (tuned b0)",
    }
    for key, label in labels.items():
        found = figures.get(key)
        if not found:
            rows.append([label, "-", "-", "-"])
            continue
        rows.append(
            [
                label,
                _interval(found["expected_clicks"]),
                str(found["clicks"]),
                f"{found['spend_share']:.3f}",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [title]
    for index, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _plot_pacer(training: Any, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (loss_ax, gain_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(training.losses)
    loss_ax.set_xlabel("iteration")
    loss_ax.set_ylabel("mean Huber loss")
    loss_ax.set_yscale("log")
    gain_ax.plot(training.gains)
    gain_ax.axhline(0.0, color="gray", ls=":", lw=1, label="linear bidding")
    gain_ax.set_xlabel("iteration")
    gain_ax.set_ylabel("episode gain over linear (scaled)")
    gain_ax.legend(fontsize=8)
    figure.suptitle("Budget pacing Q-network training")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# Command line --------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `make train` options to a parser (used by `adorch train` too)."""
    parser.add_argument("--agent", choices=AGENTS, default="content")
    parser.add_argument(
        "--campaign", choices=("all", "men", "women"), default="all",
        help="OBD campaign (content)",
    )  # fmt: skip
    parser.add_argument(
        "--policy", choices=("random", "bts"), default="random",
        help="OBD logging policy whose log trains the network (content)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=int, default=1500, help="gradient steps (content)"
    )
    parser.add_argument(
        "--c0", default="1/32", help="budget ratio of the pacing episodes (budget)"
    )
    parser.add_argument(
        "--iterations", type=int, default=120,
        help="batches of pacing episodes played while training (budget)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--n-bootstrap", type=int, default=500)
    parser.add_argument(
        "--independent", action="store_true",
        help="ablation: train agents independently instead of jointly",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance", type=float, default=None,
        help="largest tolerated drop, a fraction of the serving value "
        f"(default: settings.promote_tolerance or {DEFAULT_TOLERANCE})",
    )  # fmt: skip
    parser.add_argument(
        "--estimator", choices=REPORTED, default=DEFAULT_ESTIMATOR,
        help="OPE estimator the gate uses",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="promote even when the gate refuses (loudly)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the training configuration from parsed arguments."""
    return TrainConfig(
        campaign=args.campaign,
        policy=args.policy,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        hidden=args.hidden,
        seed=args.seed,
        train_fraction=args.train_fraction,
        n_bootstrap=args.n_bootstrap,
        independent=args.independent,
    )


def run_from_args(settings: Settings, args: argparse.Namespace) -> int:
    """Run the pipeline for parsed arguments; return the exit status.

    0 when the candidate was promoted, 3 when the gate refused it (so scripts
    can tell), 1 on an error.
    """
    try:
        if args.agent == "budget":
            outcome: PromotionResult = train_and_promote_budget(settings, args)
        else:
            outcome = train_and_promote(
                settings,
                config_from_args(args),
                force=args.force,
                tolerance=args.tolerance,
                estimator=args.estimator,
                out_dir=args.out,
                progress=not args.no_progress,
            )
    except (LearningError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0 if outcome.decision.promote else 3


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m rl.promote` and `make train`."""
    parser = argparse.ArgumentParser(
        prog="python -m rl.promote",
        description="Train, evaluate off-policy against the serving weights, and "
        "promote through the gate.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_from_args(settings, args)


if __name__ == "__main__":
    sys.exit(main())
