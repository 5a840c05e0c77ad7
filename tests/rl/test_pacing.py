"""Tests of the pacing bidders (`rl.pacing`) and their report (`rl.pacing_report`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ad_orchestrator.errors import LearningError
from rl.envs.auction import AuctionEnv, AuctionLog, CampaignInfo, load_ipinyou
from rl.pacing import (
    ACTION_STEPS,
    N_ACTIONS,
    STATE_DIM,
    STATE_FEATURES,
    DQNPacingBidder,
    LinearBidder,
    PacerTrainingConfig,
    PacingPolicy,
    PacingQNet,
    PIDBidder,
    PIDConfig,
    load_pacing_policy,
    pacing_state,
    publish_pacer,
    spend_plan,
    train_dqn_pacer,
    tune_linear,
    tune_pid,
)
from rl.pacing_report import main, paired_bootstrap, parse_c0, parse_reference


def synthetic_env(
    *, episodes: int = 8, horizon: int = 400, c0: float = 0.1, seed: int = 0
) -> AuctionEnv:
    """A stationary market: prices 1 to 100, log-normal pCTR, CPM_train = 50."""
    rng = np.random.default_rng(seed)
    n = episodes * horizon
    pctr = np.exp(rng.normal(np.log(0.004), 0.5, n))
    log = AuctionLog(
        clicks=(rng.random(n) < pctr).astype(np.int64),
        prices=rng.integers(1, 101, n),
        pctr=pctr,
        info=CampaignInfo(cost_train=50 * n, imp_train=n, clk_train=int(0.004 * n)),
    )
    return AuctionEnv(log, c0, horizon)


def plan_gap(
    env: AuctionEnv, bidder: object, plan: np.ndarray, first_slot: int = 0
) -> np.ndarray:
    """Per-lane worst gap between spent share and plan at the slot ends.

    Slots before `first_slot` (the controller's start-up) are not counted.
    """
    result = env.run(bidder, env.episodes("train"), record=True)  # type: ignore[arg-type]
    assert result.spend_curve is not None
    slots = plan.shape[0]
    ends = np.arange(1, slots + 1) * (env.horizon // slots) - 1
    shares = result.spend_curve[:, ends] / env.budget
    return np.abs(shares - plan[None, :])[:, first_slot:].max(axis=1)


# Linear bidding ---------------------------------------------------------------------


def test_linear_bidder_is_monotonic_in_b0() -> None:
    """With a budget that never binds, a higher b0 wins a superset of auctions."""
    env = synthetic_env(c0=1.0)
    grid = np.linspace(1.0, 60.0, 25)
    totals = [env.evaluate(LinearBidder(b0, 0.004), "train") for b0 in grid]
    impressions = [s.impressions for s in totals]
    spend = [s.spend for s in totals]
    clicks = [s.clicks for s in totals]
    assert impressions[-1] > impressions[0]
    for series in (impressions, spend, clicks):
        assert all(b >= a for a, b in zip(series, series[1:], strict=False))


def test_linear_bids_scale_with_pctr_over_its_mean() -> None:
    """bid = b0 x pCTR / mean pCTR."""
    bidder = LinearBidder(10.0, 0.002)
    bidder.reset(type("C", (), {"lanes": 2})())  # type: ignore[arg-type]
    bids = bidder.bid(0, np.array([0.002, 0.004]), np.array([100, 100]))
    assert bids.tolist() == [10.0, 20.0]


def test_tune_linear_returns_the_best_b0_of_its_grid() -> None:
    """The tuned b0 has the most clicks of the grid, measured as `evaluate` does."""
    env = synthetic_env(c0=0.05)
    tuning = tune_linear(env, grid=[2.0, 5.0, 10.0, 20.0, 40.0])
    best = max(row[1] for row in tuning.grid)
    assert tuning.clicks == best
    direct = env.evaluate(LinearBidder(tuning.params["b0"], env.mean_pctr()), "train")
    assert direct.clicks == tuning.clicks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"b0": 10.0, "mean_pctr": 0.0}, "`mean_pctr`"),
        ({"b0": -1.0, "mean_pctr": 0.01}, "`b0`"),
    ],
)
def test_linear_bidder_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    """A bad base bid or mean pCTR is refused, naming it."""
    with pytest.raises(LearningError, match=message):
        LinearBidder(**kwargs)


# PID pacing -------------------------------------------------------------------------


def test_pid_tracks_an_even_plan_where_linear_does_not() -> None:
    """On a stationary market the PID closes in on the plan; linear runs out early."""
    env = synthetic_env(horizon=2000)
    config = PIDConfig(slots=20)
    plan = spend_plan("even", 20)
    b0 = 60.0  # far too high: the linear bidder spends its budget early
    pid = PIDBidder(b0, 0.004, config)
    linear_gap = plan_gap(env, LinearBidder(b0, 0.004), plan, first_slot=10)
    pid_gap = plan_gap(env, pid, plan, first_slot=10)
    assert linear_gap.min() > 0.3
    assert pid_gap.max() < 0.07
    assert env.evaluate(pid, "train").spend >= 0.95 * env.evaluate(pid, "train").budget


def test_pid_follows_a_shaped_plan() -> None:
    """Given a back-loaded plan, the PID's spend follows it, not an even one."""
    env = synthetic_env(horizon=2000)
    plan = (np.arange(1, 21) / 20) ** 2
    bidder = PIDBidder(20.0, 0.004, PIDConfig(slots=20), plan)
    assert plan_gap(env, bidder, plan, first_slot=5).max() < 0.1
    assert plan_gap(env, bidder, spend_plan("even", 20), first_slot=5).min() > 0.15


def test_shaped_plan_follows_the_traffic_value() -> None:
    """A shaped plan ends at 1, increases, and weighs slots by their pCTR mass."""
    env = synthetic_env()
    plan = spend_plan("shaped", 10, env)
    assert plan.shape == (10,)
    assert plan[-1] == pytest.approx(1.0)
    assert (np.diff(plan) > 0).all()
    assert np.abs(plan - spend_plan("even", 10)).max() < 0.05


def test_tune_pid_picks_the_grid_best() -> None:
    """The chosen gains have the most clicks of the PID grid on the split."""
    env = synthetic_env(c0=0.05)
    tuning = tune_pid(env, 30.0, kp_grid=(1.0, 10.0), ki_grid=(0.0,), kd_grid=(0.0,))
    assert tuning.clicks == max(row[1] for row in tuning.grid)
    assert len(tuning.grid) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kp": -1.0}, "`kp`"),
        ({"ki": float("nan")}, "`ki`"),
        ({"kd": float("inf")}, "`kd`"),
        ({"slots": 0}, "`slots`"),
        ({"plan": "front"}, "`plan`"),
    ],
)
def test_pid_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    """Each bad PID setting is refused with its name."""
    with pytest.raises(LearningError, match=message):
        PIDConfig(**kwargs)


def test_spend_plan_rejects_unknown_kinds() -> None:
    """Only even and shaped plans exist; shaped needs the environment."""
    with pytest.raises(LearningError, match="`kind`"):
        spend_plan("front", 10)  # type: ignore[arg-type]
    with pytest.raises(LearningError, match="`env`"):
        spend_plan("shaped", 10)


# DQN pacing -------------------------------------------------------------------------


def test_pacing_state_features() -> None:
    """The state is time left, budget left, spend rate, win rate, CPM, log m."""
    state = pacing_state(
        slot=5,
        slots=20,
        remaining=np.array([500.0]),
        budget=1000.0,
        last_spend=np.array([100.0]),
        last_wins=np.array([4.0]),
        last_auctions=50,
        cpm_train=50.0,
        multiplier=np.array([2.0]),
    )
    assert state.shape == (1, STATE_DIM)
    expected = [0.75, 0.5, 100 / 50, 4 / 50, 25 / 50, np.log(2.0)]
    assert state[0] == pytest.approx(expected, rel=1e-6)


def test_policy_returns_multiplier_steps_and_checks_shapes() -> None:
    """The production policy maps states to factors 1 + step."""
    torch.manual_seed(0)
    policy = PacingPolicy(PacingQNet(hidden=8))
    factors = policy.step(np.zeros((3, STATE_DIM)))
    assert factors.shape == (3,)
    assert set(np.round(factors - 1.0, 6)) <= set(np.round(ACTION_STEPS, 6))
    with pytest.raises(LearningError, match=r"\(batch, 6\)"):
        policy.step(np.zeros((3, STATE_DIM + 1)))


def test_schema_names_every_feature_and_action() -> None:
    """The weight store's schema string lists the state features and steps."""
    for feature in STATE_FEATURES:
        assert feature in PacingQNet.INPUT_SCHEMA
    assert PacingQNet.INPUT_SCHEMA.count(",") == STATE_DIM - 1 + N_ACTIONS - 1
    assert PacingQNet().layers[-1].out_features == N_ACTIONS


def test_dqn_bidder_moves_its_multiplier_once_per_slot() -> None:
    """Exploring, the pacer records one state and action per slot and lane."""
    env = synthetic_env()
    bidder = DQNPacingBidder(PacingQNet(8), 20.0, 0.004, slots=10, epsilon=1.0)
    env.run(bidder, env.episodes("train"))
    assert len(bidder.states) == len(bidder.actions) == 10
    assert bidder.states[0].shape == (4, STATE_DIM)
    assert not np.allclose(bidder.multiplier, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, "`iterations`"),
        ({"lanes": 0}, "`lanes`"),
        ({"gamma": 1.5}, "`gamma`"),
        ({"epsilon_end": -0.1}, "`epsilon_end`"),
    ],
)
def test_training_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    """Each bad training setting is refused with its name."""
    with pytest.raises(LearningError, match=message):
        PacerTrainingConfig(**kwargs)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train tiny networks on one thread: on a busy machine threads only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_dqn_pacer_learns_to_spend_an_underused_budget() -> None:
    """When linear leaves most of the budget unspent, training raises the bids."""
    env = synthetic_env(episodes=16, horizon=200, c0=0.2)
    b0 = 5.0
    linear = env.evaluate(LinearBidder(b0, env.mean_pctr()), "train")
    assert linear.spend < 0.5 * linear.budget
    config = PacerTrainingConfig(
        iterations=30, lanes=32, slots=10, updates_per_iteration=10, batch_size=128
    )

    training = train_dqn_pacer(env, b0, config)

    paced = env.evaluate(training.bidder(env.mean_pctr()), "train")
    assert len(training.losses) == len(training.gains) == 30
    assert paced.spend > 1.3 * linear.spend
    assert paced.expected_clicks > linear.expected_clicks
    assert paced.spend <= paced.budget


# The report -------------------------------------------------------------------------


def test_reference_table_gives_the_published_2997_clicks() -> None:
    """The published lin_bid, RLB and ss_mdp rows for 2997 are read."""
    reference = parse_reference()
    assert {k: v["clicks"] for k, v in reference.items()} == {
        "ss_mdp": 80,
        "mcpc": 48,
        "lin_bid": 71,
        "rlb": 78,
    }
    assert reference["rlb"]["c0"] == pytest.approx(1 / 32)


@pytest.mark.parametrize("text", ["0", "2", "abc", "1/0"])
def test_report_rejects_bad_c0(text: str) -> None:
    """`--c0` values outside (0, 1] or unparsable are refused with the flag name."""
    with pytest.raises(LearningError, match="`--c0`"):
        parse_c0(text)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_report_writes_table_json_and_png(tmp_path: Path) -> None:
    """A small run writes results.json, results.md and the spend plot."""
    code = main(
        ["--out-dir", str(tmp_path), "--c0", "1/32", "--iterations", "2"]
        + ["--seeds", "0", "--plot-c0", "1/32"]
    )
    assert code == 0
    report = json.loads((tmp_path / "results.json").read_text())
    (entry,) = report["results"]
    for split in ("train", "eval", "full"):
        for name in ("linear", "pid", "dqn"):
            row = entry["splits"][split][name]
            assert row["spend"] <= row["budget"]
    assert entry["splits"]["full"]["linear"]["auctions"] == len(load_ipinyou())
    assert "| 1/32 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "pacing_spend.png").stat().st_size > 10_000
    assert list(tmp_path.glob("dqn_pacer_c0_1-32.safetensors"))


# The weight store -------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_published_pacer_loads_back_with_the_same_decisions(tmp_path: Path) -> None:
    """Weights published as agent 'budget' load back into an equal policy."""
    fakeredis = pytest.importorskip("fakeredis")
    from ad_orchestrator.settings import load_settings
    from ad_orchestrator.weights import WeightStore

    settings = load_settings(
        key_prefix="pacing-test",
        weights_hmac_key="k" * 32,
        state_dir=tmp_path / "state",
    )
    store = WeightStore(fakeredis.FakeRedis(), settings)
    env = synthetic_env(episodes=4, horizon=200)
    config = PacerTrainingConfig(iterations=2, lanes=4, slots=5, batch_size=16)
    training = train_dqn_pacer(env, 10.0, config)

    version = publish_pacer(
        store, training, env, evaluation={"eval": {"dqn": 3}}, serve=True
    )
    policy, metadata = load_pacing_policy(store)

    assert store.serving_version("budget") == version
    assert metadata["input_schema"] == PacingQNet.INPUT_SCHEMA
    assert metadata["evaluation"] == {"eval": {"dqn": 3}}
    states = np.random.default_rng(0).random((16, STATE_DIM)).astype(np.float32)
    expected = PacingPolicy(training.net).step(states)
    assert policy.step(states).tolist() == expected.tolist()


def test_loading_with_nothing_served_says_how_to_publish(tmp_path: Path) -> None:
    """Without a serving version the error names the publishing command."""
    fakeredis = pytest.importorskip("fakeredis")
    from ad_orchestrator.settings import load_settings
    from ad_orchestrator.weights import WeightStore

    settings = load_settings(
        key_prefix="pacing-empty", weights_hmac_key="k" * 32, state_dir=tmp_path
    )
    with pytest.raises(LearningError, match="--publish"):
        load_pacing_policy(WeightStore(fakeredis.FakeRedis(), settings))


def test_paired_bootstrap_interval_brackets_the_total() -> None:
    """The interval holds the observed total and excludes 0 for a steady gain."""
    steady = np.ones(50)
    noisy = np.array([5.0, -5.0] * 25)
    low_noise = paired_bootstrap(steady)
    assert low_noise["total"] == 50
    assert low_noise["low"] == low_noise["high"] == 50
    wide = paired_bootstrap(noisy)
    assert wide["low"] < 0 < wide["high"]
