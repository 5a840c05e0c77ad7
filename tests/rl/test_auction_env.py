"""Tests of the budgeted auction replay (`rl.envs.auction`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ad_orchestrator.errors import LearningError
from rl.envs.auction import (
    DATA_DIR,
    AuctionEnv,
    AuctionLog,
    CampaignInfo,
    EpisodeContext,
    budget_for,
    load_ipinyou,
)
from rl.pacing import DQNPacingBidder, LinearBidder, PacingQNet, PIDBidder

C0S = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


@pytest.fixture(scope="module")
def ipinyou() -> AuctionLog:
    return load_ipinyou()


class ConstantBidder:
    """Bids the same amount on every auction (a test double)."""

    def __init__(self, amount: float) -> None:
        self.amount = amount
        self.lanes = 0

    def reset(self, context: EpisodeContext) -> None:
        self.lanes = context.lanes

    def bid(self, t: int, pctr: np.ndarray, remaining: np.ndarray) -> np.ndarray:
        return np.full(self.lanes, self.amount)

    def observe(self, t: int, won: np.ndarray, cost: np.ndarray) -> None:
        pass


def tiny_log(
    prices: list[int], clicks: list[int], budget: int, horizon: int
) -> AuctionEnv:
    """A hand-made log whose budget at c0 = 1 is exactly `budget` per episode.

    Logs shorter than two episodes are repeated so that train/eval can split.
    """
    if len(prices) < 2 * horizon:
        prices, clicks = prices * 2, clicks * 2
    n = len(prices)
    info = CampaignInfo(cost_train=budget, imp_train=horizon, clk_train=1)
    log = AuctionLog(
        clicks=np.asarray(clicks, dtype=np.int64),
        prices=np.asarray(prices, dtype=np.int64),
        pctr=np.full(n, 0.01),
        info=info,
    )
    return AuctionEnv(log, c0=1.0, horizon=horizon)


# Loading and the budget -------------------------------------------------------------


def test_load_ipinyou_reads_every_auction(ipinyou: AuctionLog) -> None:
    """The shipped log loads whole: 156,063 auctions, the info file's totals."""
    info = json.loads((DATA_DIR / "info.json").read_text())
    assert len(ipinyou) == info["imp_test"]
    assert int(ipinyou.clicks.sum()) == info["clk_test"]
    assert int(ipinyou.prices.sum()) == info["cost_test"]
    assert ipinyou.info.cost_train == info["cost_train"]


def test_budget_follows_the_published_formula(ipinyou: AuctionLog) -> None:
    """B = int(cost_train / imp_train x T x c0): 1969 at T = 1000, c0 = 1/32."""
    info = json.loads((DATA_DIR / "info.json").read_text())
    for c0 in C0S:
        expected = int(info["cost_train"] / info["imp_train"] * c0 * 1000)
        assert AuctionEnv(ipinyou, c0).budget == expected
    assert budget_for(ipinyou.info.cpm_train, 1000, 1 / 32) == 1969
    assert budget_for(50.0, 100, 0.5) == 2500


@pytest.mark.parametrize(
    ("horizon", "c0", "argument"),
    [
        (1000, 0.0, "`c0`"),
        (1000, -0.5, "`c0`"),
        (1000, 1.5, "`c0`"),
        (1000, float("nan"), "`c0`"),
        (1000, "1/32", "`c0`"),
        (0, 1 / 32, "`horizon`"),
        (-10, 1 / 32, "`horizon`"),
        (2.5, 1 / 32, "`horizon`"),
        (True, 1 / 32, "`horizon`"),
    ],
)
def test_bad_protocol_arguments_are_named(
    ipinyou: AuctionLog, horizon: object, c0: object, argument: str
) -> None:
    """A bad budget ratio or episode length is refused, naming the argument."""
    with pytest.raises(LearningError, match=argument):
        budget_for(63.0, horizon, c0)  # type: ignore[arg-type]
    with pytest.raises(LearningError, match=argument):
        AuctionEnv(ipinyou, c0, horizon)  # type: ignore[arg-type]


def test_horizon_too_long_for_a_split_is_refused(ipinyou: AuctionLog) -> None:
    """An episode length leaving fewer than two full episodes cannot be split."""
    with pytest.raises(LearningError, match="`horizon`"):
        AuctionEnv(ipinyou, 1 / 32, horizon=len(ipinyou))


def test_splits_are_disjoint_halves_and_full_covers_the_log(
    ipinyou: AuctionLog,
) -> None:
    """Train precedes eval, they do not overlap, and full covers every auction."""
    env = AuctionEnv(ipinyou, 1 / 32)
    train, evaluation, full = (env.episodes(s) for s in ("train", "eval", "full"))
    assert len(train) == len(evaluation) == 78
    assert train.max() < evaluation.min()
    assert len(full) == 157
    assert env.evaluate(LinearBidder(1e9, 1.0), "full").auctions == len(ipinyou)
    with pytest.raises(LearningError, match="`split`"):
        env.episodes("test")  # type: ignore[arg-type]


# The win and pay rule ---------------------------------------------------------------


def test_win_when_bid_reaches_price_and_pay_the_price() -> None:
    """A bid equal to the price wins; the winner pays the price, not its bid."""
    env = tiny_log(prices=[5, 6, 3, 0], clicks=[1, 1, 0, 1], budget=100, horizon=4)
    result = env.run(ConstantBidder(5.0), [0])
    assert result.impressions.tolist() == [3]
    assert result.spend.tolist() == [5 + 3 + 0]
    assert result.clicks.tolist() == [2]


def test_an_auction_priced_above_the_budget_left_is_lost() -> None:
    """The bid is capped at the budget left: a later cheaper auction still wins."""
    env = tiny_log(prices=[5, 3, 2, 10], clicks=[0, 1, 1, 1], budget=7, horizon=4)
    result = env.run(ConstantBidder(100.0), [0], record=True)
    # Wins 5 (2 left), loses 3 (> 2 left), wins 2 (0 left), loses 10.
    assert result.impressions.tolist() == [2]
    assert result.spend.tolist() == [7]
    assert result.clicks.tolist() == [1]
    assert result.spend_curve is not None
    assert result.spend_curve[0].tolist() == [5, 5, 7, 7]


def test_every_episode_gets_a_fresh_budget() -> None:
    """The budget resets per episode, including a shorter last one."""
    env = tiny_log(prices=[4, 4, 4, 4, 4], clicks=[0] * 5, budget=4, horizon=2)
    summary = env.evaluate(ConstantBidder(50.0), "full")
    assert summary.episodes == 3
    assert summary.auctions == 5
    assert summary.impressions == 3
    assert summary.spend == 12


def test_run_episode_matches_the_batched_run(ipinyou: AuctionLog) -> None:
    """Replaying one episode alone gives what its lane gives in a batch."""
    env = AuctionEnv(ipinyou, 1 / 16)
    bidder = LinearBidder(40.0, env.mean_pctr())
    batch = env.run(bidder, env.episodes("eval"))
    alone = env.run_episode(bidder, int(env.episodes("eval")[5]))
    assert alone.clicks == batch.clicks[5]
    assert alone.spend == batch.spend[5]


# No overspend, over the whole log ---------------------------------------------------


def bidders_for(env: AuctionEnv) -> dict[str, object]:
    mean_pctr = env.mean_pctr()
    return {
        "constant max": ConstantBidder(300.0),
        "linear": LinearBidder(500.0, mean_pctr),
        "pid": PIDBidder(30.0, mean_pctr),
        "dqn (untrained)": DQNPacingBidder(PacingQNet(), 30.0, mean_pctr, epsilon=1.0),
    }


@pytest.mark.parametrize("c0", C0S)
def test_no_episode_of_the_log_spends_more_than_its_budget(
    ipinyou: AuctionLog, c0: float
) -> None:
    """Every bidder, on every episode of the log, spends at most its budget."""
    env = AuctionEnv(ipinyou, c0)
    for name, bidder in bidders_for(env).items():
        result = env.run(bidder, env.episodes("full"), record=True)  # type: ignore[arg-type]
        assert result.spend_curve is not None
        over = result.spend_curve.max(axis=1) - env.budget
        assert over.max() <= 0, f"{name} overspent by {over.max()}"
        assert (np.diff(result.spend_curve, axis=1) >= 0).all()


def test_aggressive_bidders_do_exhaust_the_budget(ipinyou: AuctionLog) -> None:
    """The cap is what holds spend at the budget: a max bidder reaches it."""
    env = AuctionEnv(ipinyou, 1 / 32)
    result = env.run(ConstantBidder(300.0), env.episodes("train"))
    # Within one cheap auction of the budget (some auctions cost 0 to 5).
    assert (env.budget - result.spend).max() < 60
