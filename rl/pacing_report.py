"""Measure linear, PID and DQN pacing on the iPinYou log and write the report.

For every budget ratio c0 it tunes the linear bidder's `b0` and the PID gains on
the training split (the first half of the episodes), trains the DQN pacer on the
same split, and replays all three on the evaluation split (the second half) and on
the full log, beside the published results for campaign 2997 (c0 = 1/32).

Writes to the output folder (`artifacts/pacing/` by default):

* `results.json`: every figure, the tuned parameters and the run time;
* `results.md`: the same as Markdown tables;
* `pacing_spend.png`: spend over time (plan, linear, PID, DQN) for a few
  evaluation episodes;
* `dqn_pacer_c0_<c0>.safetensors` (unless `--no-weights`): each trained Q-network.

Run it with `python -m rl.pacing_report [--out-dir DIR] [--c0 1/32 1/8 ...]`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ad_orchestrator.errors import LearningError
from rl.envs.auction import DATA_DIR, AuctionEnv, Bidder, Summary, load_ipinyou
from rl.pacing import (
    LinearBidder,
    PacerTrainingConfig,
    PIDBidder,
    PIDConfig,
    publish_pacer,
    spend_plan,
    train_dqn_pacer_selected,
    tune_linear,
    tune_pid,
)

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("artifacts") / "pacing"
DEFAULT_C0 = ("1/32", "1/16", "1/8", "1/4", "1/2")
REFERENCE_FILE = DATA_DIR.parent / "reference_results_N1000_c0_1-32.txt"
PLOT_EPISODES = 3
BIDDERS = ("linear", "pid", "dqn")


def parse_reference(path: Path = REFERENCE_FILE, campaign: str = "2997") -> dict:
    """Read the published results of one campaign.

    Args:
        path: The published table (tab-separated, one row per campaign and
            algorithm, with a header line).
        campaign: Campaign id.

    Returns:
        `{algo: {"c0", "clicks", "impressions", "cost", "win_rate", "cpm",
        "ecpc"}}`.

    Raises:
        LearningError: If the campaign has no rows.
    """
    pattern = re.compile(
        r"camp=(?P<camp>\d+), algo=(?P<algo>\w+), N=(?P<n>\d+), c0=(?P<c0>[\d.]+)"
    )
    found: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines()[1:]:
        cells = [c.strip() for c in line.split("\t")]
        match = pattern.search(cells[0])
        if match is None or match["camp"] != campaign:
            continue
        found[match["algo"]] = {
            "c0": float(match["c0"]),
            "horizon": int(match["n"]),
            "auctions": int(cells[2]),
            "impressions": int(cells[3]),
            "clicks": int(cells[4]),
            "cost": int(cells[5]),
            "win_rate": float(cells[6].rstrip("%")) / 100.0,
            "cpm": float(cells[7]),
            "ecpc": float(cells[8]),
        }
    if not found:
        raise LearningError(f"{path} has no rows for campaign {campaign!r}")
    return found


def parse_c0(text: str) -> float:
    """Parse a budget ratio written as `1/32` or `0.03125`."""
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise LearningError(
            f"`--c0` values must be fractions like 1/32 or decimals, but got {text!r}"
        ) from None
    if not 0 < value <= 1:
        raise LearningError(f"`--c0` values must lie in (0, 1], but got {text!r}")
    return value


def paired_bootstrap(
    differences: np.ndarray, *, resamples: int = 5000, seed: int = 0
) -> dict[str, float]:
    """Return the total of per-episode differences and its 95% bootstrap interval.

    Episodes are resampled with replacement; each resample's total is the sum of
    its differences, so the interval says how much of a gain could be luck of
    which episodes the split holds.
    """
    rng = np.random.default_rng(seed)
    n = differences.shape[0]
    totals = differences[rng.integers(0, n, size=(resamples, n))].sum(axis=1)
    low, high = np.percentile(totals, [2.5, 97.5])
    return {"total": float(differences.sum()), "low": float(low), "high": float(high)}


def _row(summary: Summary) -> dict[str, Any]:
    data = summary.to_dict()
    data["ecpc"] = None if not np.isfinite(data["ecpc"]) else data["ecpc"]
    return data


def run_c0(
    log: Any,
    c0: float,
    config: PacerTrainingConfig,
    out_dir: Path,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    weights: bool = True,
    publish: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Tune, train and evaluate the three bidders at one budget ratio.

    Returns:
        The JSON-ready results, the spend curves of the first evaluation episodes
        per bidder, and the even plan's curve.
    """
    started = time.perf_counter()
    env = AuctionEnv(log, c0)
    mean_pctr = env.mean_pctr("train")

    # Tune the baselines and train the pacer, on the training split only.
    linear_tuning = tune_linear(env)
    b0 = linear_tuning.params["b0"]
    pid_tuning = tune_pid(env, b0)
    pid_config = PIDConfig(**pid_tuning.params)  # type: ignore[arg-type]
    training = train_dqn_pacer_selected(env, b0, config, seeds=seeds)
    bidders: dict[str, Bidder] = {
        "linear": LinearBidder(b0, mean_pctr),
        "pid": PIDBidder(b0, mean_pctr, pid_config),
        "dqn": training.bidder(mean_pctr),
    }

    # Evaluate everything on every split.
    results: dict[str, Any] = {
        "c0": c0,
        "budget": env.budget,
        "b0": b0,
        "pid_gains": pid_tuning.params,
        "dqn_training_seconds": round(training.seconds, 1),
        "dqn_seed_selection": training.selection,
        "splits": {},
    }
    curves: dict[str, np.ndarray] = {}
    plot_ids = env.episodes("eval")[:PLOT_EPISODES]
    per_episode: dict[str, np.ndarray] = {}
    for split in ("train", "eval", "full"):
        results["splits"][split] = {}
        for name, bidder in bidders.items():
            run = env.run(bidder, env.episodes(split))
            results["splits"][split][name] = _row(run.summary())
            if split == "eval":
                per_episode[name] = run.clicks
    results["eval_gain_over_linear"] = {
        name: paired_bootstrap(per_episode[name] - per_episode["linear"])
        for name in ("pid", "dqn")
    }
    for name, bidder in bidders.items():
        run = env.run(bidder, plot_ids, record=True)
        if run.spend_curve is not None:
            curves[name] = run.spend_curve / env.budget
    plan = spend_plan("even", env.horizon)
    if weights:
        from safetensors.torch import save_file

        label = str(Fraction(c0).limit_denominator(1024)).replace("/", "-")
        path = out_dir / f"dqn_pacer_c0_{label}.safetensors"
        meta = {k: json.dumps(v) for k, v in training.metadata(env).items()}
        save_file(training.net.state_dict(), str(path), metadata=meta)
        results["weights"] = str(path)
    if publish:
        from ad_orchestrator.settings import load_settings
        from ad_orchestrator.weights import open_store

        evaluation = {
            split: {name: row["clicks"] for name, row in rows.items()}
            for split, rows in results["splits"].items()
        }
        version = publish_pacer(
            open_store(load_settings()),
            training,
            env,
            evaluation=evaluation,
            serve=True,
        )
        results["published_version"] = version
        logger.info("published budget pacer version %d (c0=%.5f)", version, c0)
    results["seconds"] = round(time.perf_counter() - started, 1)
    logger.info("c0=%.5f done in %.1fs", c0, results["seconds"])
    return results, curves, plan


def goals(report: dict[str, Any]) -> dict[str, bool]:
    """Check the issue's goals against the measured figures."""
    checks: dict[str, bool] = {}
    rlb = report["reference"].get("rlb")
    for entry in report["results"]:
        if rlb is not None and abs(entry["c0"] - rlb["c0"]) < 1e-12:
            clicks = entry["splits"]["full"]["dqn"]["clicks"]
            text = (
                f"DQN at least RLB's {rlb['clicks']} clicks at c0 = "
                f"{_fmt_c0(entry['c0'])} on the full log ({clicks})"
            )
            checks[text] = clicks >= rlb["clicks"]
    above = [
        e["splits"]["eval"]["dqn"]["clicks"] > e["splits"]["eval"]["linear"]["clicks"]
        for e in report["results"]
    ]
    checks["DQN above linear on the evaluation split at every c0"] = all(above)
    return checks


def _fmt_c0(c0: float) -> str:
    return str(Fraction(c0).limit_denominator(1024))


def to_markdown(report: dict[str, Any]) -> str:
    """Render the report's tables as Markdown."""
    lines = [
        "# Budget pacing on iPinYou campaign 2997",
        "",
        f"T = {report['horizon']} auctions per episode; train split = first "
        f"{report['episodes']['train']} episodes, evaluation split = last "
        f"{report['episodes']['eval']}, full log = all {report['episodes']['full']} "
        "(the last one partial). Spend and CPM in the log's units, eCPC in money "
        "(spend / 1000 / clicks), as in the published table.",
        "",
        "## Evaluation split",
        "",
        "| c0 | bidder | clicks | expected clicks | spend | budget | CPM | eCPC "
        "| win rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["results"]:
        for name in BIDDERS:
            r = entry["splits"]["eval"][name]
            ecpc = "n/a" if r["ecpc"] is None else f"{r['ecpc']:.2f}"
            lines.append(
                f"| {_fmt_c0(entry['c0'])} | {name} | {r['clicks']} | "
                f"{r['expected_clicks']:.1f} | {r['spend']} | {r['budget']} | "
                f"{r['cpm']:.2f} | {ecpc} | {100 * r['win_rate']:.2f}% |"
            )
    lines += [
        "",
        "## Full log (clicks), beside the published results",
        "",
        "| c0 | linear | PID | DQN | published lin_bid | published RLB "
        "| published ss_mdp |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    reference = report["reference"]
    for entry in report["results"]:
        full = entry["splits"]["full"]
        published = ["", "", ""]
        for i, algo in enumerate(("lin_bid", "rlb", "ss_mdp")):
            ref = reference.get(algo)
            if ref is not None and abs(ref["c0"] - entry["c0"]) < 1e-9:
                published[i] = str(ref["clicks"])
        lines.append(
            f"| {_fmt_c0(entry['c0'])} | {full['linear']['clicks']} | "
            f"{full['pid']['clicks']} | {full['dqn']['clicks']} | "
            + " | ".join(published)
            + " |"
        )
    lines += [
        "",
        "## Clicks over linear on the evaluation split",
        "",
        "Paired bootstrap over the evaluation episodes (5000 resamples): the 95% "
        "interval of the total gain in clicks.",
        "",
        "| c0 | PID - linear | 95% interval | DQN - linear | 95% interval |",
        "|---|---:|---|---:|---|",
    ]
    for entry in report["results"]:
        gain = entry["eval_gain_over_linear"]
        cells = [
            f"{gain[name]['total']:+.0f} | [{gain[name]['low']:+.0f}, "
            f"{gain[name]['high']:+.0f}]"
            for name in ("pid", "dqn")
        ]
        lines.append(f"| {_fmt_c0(entry['c0'])} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Tuned parameters (training split)",
        "",
        "| c0 | budget | linear b0 | PID gains | DQN training (s) |",
        "|---|---:|---:|---|---:|",
    ]
    for entry in report["results"]:
        gains = ", ".join(f"{k}={v:g}" for k, v in entry["pid_gains"].items())
        lines.append(
            f"| {_fmt_c0(entry['c0'])} | {entry['budget']} | {entry['b0']:g} | "
            f"{gains} | {entry['dqn_training_seconds']} |"
        )
    goals = report.get("goals", {})
    if goals:
        lines += ["", "## Goals", ""]
        lines += [f"- {text}: {'yes' if met else 'no'}" for text, met in goals.items()]
    lines += ["", f"Whole report: {report['seconds']} s.", ""]
    return "\n".join(lines)


def plot(
    curves: dict[float, tuple[dict[str, np.ndarray], np.ndarray]], path: Path
) -> None:
    """Draw spend over time, one panel per (c0, episode)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = list(curves)
    n_cols = max(c["linear"].shape[0] for c, _ in curves.values())
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(4 * n_cols, 3 * len(rows)), squeeze=False
    )
    styles = {"linear": "tab:gray", "pid": "tab:blue", "dqn": "tab:red"}
    for i, c0 in enumerate(rows):
        per_bidder, plan = curves[c0]
        for j in range(n_cols):
            ax = axes[i][j]
            horizon = per_bidder["linear"].shape[1]
            x = np.arange(1, horizon + 1)
            ax.plot(x, plan, color="black", linestyle="--", label="plan (even)")
            for name, color in styles.items():
                ax.plot(x, per_bidder[name][j], color=color, label=name)
            ax.set_title(f"c0={_fmt_c0(c0)}, eval episode {j + 1}", fontsize=9)
            ax.set_ylim(0, 1.05)
            if j == 0:
                ax.set_ylabel("spend / budget")
            if i == len(rows) - 1:
                ax.set_xlabel("auction")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog="python -m rl.pacing_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--c0", nargs="+", default=list(DEFAULT_C0))
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="DQN seeds trained per c0; the one with most training clicks serves",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=PacerTrainingConfig().iterations,
        help="DQN training batches per c0",
    )
    parser.add_argument(
        "--plot-c0",
        nargs="+",
        default=["1/32", "1/8"],
        help="budget ratios whose spend curves are drawn",
    )
    parser.add_argument("--no-weights", action="store_true")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="publish the pacer trained at --publish-c0 to the weight store "
        "(settings from ADORCH_ variables) as agent 'budget' and serve it",
    )
    parser.add_argument("--publish-c0", default="1/32")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whole report; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)  # small networks: threads cost more than they give
    started = time.perf_counter()
    c0s = [parse_c0(text) for text in args.c0]
    plot_c0 = {parse_c0(text) for text in args.plot_c0}
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    config = PacerTrainingConfig(iterations=args.iterations)

    log = load_ipinyou()
    publish_c0 = parse_c0(args.publish_c0) if args.publish else None
    results, curves = [], {}
    for c0 in c0s:
        entry, per_bidder, plan = run_c0(
            log,
            c0,
            config,
            out_dir,
            seeds=args.seeds,
            weights=not args.no_weights,
            publish=publish_c0 is not None and abs(c0 - publish_c0) < 1e-12,
        )
        results.append(entry)
        if c0 in plot_c0:
            curves[c0] = (per_bidder, plan)
    env = AuctionEnv(log, c0s[0])
    report = {
        "dataset": "ipinyou/2997 test log",
        "horizon": env.horizon,
        "episodes": {
            s: int(env.episodes(s).shape[0]) for s in ("train", "eval", "full")
        },
        "dqn_config": {k: getattr(config, k) for k in config.__slots__},
        "reference": parse_reference(),
        "results": results,
    }
    report["goals"] = goals(report)
    if curves:
        plot(curves, out_dir / "pacing_spend.png")
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "results.md").write_text(to_markdown(report))
    logger.info("report written to %s in %.1fs", out_dir, report["seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
