"""Replay of a real second-price auction log, episode by episode, under a budget.

The iPinYou campaign 2997 test log (`data/ipinyou/2997/test.theta.txt.gz`, as
published with Cai et al., "Real-Time Bidding by Reinforcement Learning in Display
Advertising", WSDM 2017) holds one auction per line: whether the impression was
clicked, the market price (the highest competing bid, which is what the winner
pays) and the campaign's predicted click-through rate (pCTR). `info.json` holds the
campaign's training-log totals.

The protocol follows the published one so our figures sit beside its table:

* The log is cut into consecutive episodes of `horizon` (T) auctions. The last,
  shorter episode (63 auctions for T = 1000) is replayed only in the full-log figures,
  with the whole budget, as the published runs do.
* Every episode gets the budget `B = CPM_train x 1e-3 x T x c0` in money, with
  `CPM_train = cost_train / imp_train`. Market prices in the log are per mille, so
  in the log's own units (the units every bid, price and spend here is counted in)
  that is `int(CPM_train x T x c0)`: 1969 for T = 1000 and c0 = 1/32, exactly the
  published code's `int(cpm * c0 * N)`.
* A bid wins when it is at least the market price and pays the market price.
* A bid never exceeds the remaining budget: the published code caps each bid at the
  budget left (`a = min(b, a)`), and so do we. Hence an auction whose price is above
  the remaining budget is lost whatever was bid, and no episode ever spends more
  than its budget (not even one bid more). Bids are also capped at `max_bid` (300,
  the published maximum; the log's prices stop at 277). The published code floors
  bids to integers; since prices are integers, `floor(bid) >= price` exactly when
  `bid >= price`, so we keep bids as floats with the same outcomes.

Splits: the first half of the full episodes is for training and tuning, the second
half for evaluation (78 and 78 episodes for T = 1000), and `full` is every episode,
the partial last one included, for comparison with the published table.

Episodes run in lockstep as lanes of one numpy batch, so a bidder answers for all
lanes at once (`Bidder`), and a grid of parameters can be evaluated in one pass by
giving each lane its own parameter.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ad_orchestrator.errors import LearningError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "ipinyou" / "2997"
MAX_BID = 300.0
"""The published code's `ipinyou_max_market_price`, the highest bid placed."""
DEFAULT_HORIZON = 1000
Split = Literal["train", "eval", "full"]
SPLITS: tuple[Split, ...] = ("train", "eval", "full")


# Data -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignInfo:
    """The campaign's training-log totals from `info.json`."""

    cost_train: int
    imp_train: int
    clk_train: int

    @property
    def cpm_train(self) -> float:
        """Mean market price per mille on the training log (log units)."""
        return self.cost_train / self.imp_train


@dataclass(frozen=True, eq=False)
class AuctionLog:
    """An auction log as aligned arrays, one row per auction.

    Attributes:
        clicks: `(n,)` int64, 1 where the impression was clicked.
        prices: `(n,)` int64 market prices (per mille, the log's units).
        pctr: `(n,)` float64 predicted click-through rates.
        info: The campaign's training-log totals.
    """

    clicks: np.ndarray
    prices: np.ndarray
    pctr: np.ndarray
    info: CampaignInfo

    def __post_init__(self) -> None:
        n = self.clicks.shape[0]
        for name in ("clicks", "prices", "pctr"):
            array = getattr(self, name)
            if array.shape != (n,):
                raise LearningError(
                    f"`{name}` must have shape ({n},) like `clicks`, but got "
                    f"{array.shape}"
                )
        if n == 0:
            raise LearningError("the auction log is empty; give at least one auction")
        if (self.prices < 0).any():
            raise LearningError("`prices` must be non-negative market prices")

    def __len__(self) -> int:
        return int(self.clicks.shape[0])


def load_ipinyou(directory: Path | str = DATA_DIR) -> AuctionLog:
    """Load `test.theta.txt.gz` and `info.json` of one iPinYou campaign.

    Args:
        directory: Folder holding both files (campaign 2997 by default).

    Returns:
        The log as arrays.

    Raises:
        LearningError: If a file is missing or a line does not have three fields.
    """
    directory = Path(directory)
    log_path = directory / "test.theta.txt.gz"
    info_path = directory / "info.json"
    for path in (log_path, info_path):
        if not path.is_file():
            raise LearningError(
                f"{path} is missing; the iPinYou log ships in data/ipinyou/ "
                "(see data/README.md)"
            )
    with gzip.open(log_path, "rt") as handle:
        table = np.loadtxt(handle, dtype=np.float64, ndmin=2)
    if table.shape[1] != 3:
        raise LearningError(
            f"{log_path} must have 3 columns (click, market price, pCTR), but has "
            f"{table.shape[1]}"
        )
    info = json.loads(info_path.read_text())
    return AuctionLog(
        clicks=table[:, 0].astype(np.int64),
        prices=table[:, 1].astype(np.int64),
        pctr=table[:, 2].copy(),
        info=CampaignInfo(
            cost_train=int(info["cost_train"]),
            imp_train=int(info["imp_train"]),
            clk_train=int(info["clk_train"]),
        ),
    )


def check_protocol(horizon: int, c0: float) -> None:
    """Raise if the episode length or budget ratio is unusable.

    Raises:
        LearningError: Naming `horizon` or `c0`.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer):
        raise LearningError(
            f"`horizon` (T) must be an int number of auctions, but got {horizon!r}"
        )
    if horizon < 1:
        raise LearningError(f"`horizon` (T) must be at least 1, but got {horizon}")
    if not isinstance(c0, int | float) or not math.isfinite(c0) or not 0 < c0 <= 1:
        raise LearningError(
            f"`c0` (the budget ratio) must be a number in (0, 1], such as 1/32, "
            f"but got {c0!r}"
        )


def budget_for(cpm_train: float, horizon: int, c0: float) -> int:
    """Return one episode's budget in log units, `int(CPM_train x T x c0)`.

    This is the money budget `CPM_train x 1e-3 x T x c0` expressed in the log's
    per-mille price units (times 1000), truncated as the published code does.

    Args:
        cpm_train: Mean market price on the training log (log units).
        horizon: Auctions per episode (T).
        c0: Budget ratio in (0, 1].

    Raises:
        LearningError: If an argument is out of range (the message names it).
    """
    check_protocol(horizon, c0)
    if not math.isfinite(cpm_train) or cpm_train <= 0:
        raise LearningError(f"`cpm_train` must be positive, but got {cpm_train!r}")
    # x 1e-3 (per mille) x 1000 (money to log units) cancel; same order as the
    # published `int(cpm * c0 * N)` so the truncation matches it exactly.
    return int(cpm_train * c0 * horizon)


# Bidders --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EpisodeContext:
    """What a bidder learns when a batch of episodes starts.

    Attributes:
        lanes: Episodes run side by side.
        budget: Each episode's budget (log units).
        horizon: Auctions per episode (T); a shorter last episode ends early.
        cpm_train: Mean training market price, a scale for prices.
    """

    lanes: int
    budget: int
    horizon: int
    cpm_train: float


class Bidder(Protocol):
    """A bidding strategy answering for a batch of episodes at once."""

    def reset(self, context: EpisodeContext) -> None:
        """Start `context.lanes` fresh episodes."""

    def bid(self, t: int, pctr: np.ndarray, remaining: np.ndarray) -> np.ndarray:
        """Return `(lanes,)` bids for auction `t` given its pCTR and budget left."""

    def observe(self, t: int, won: np.ndarray, cost: np.ndarray) -> None:
        """Learn auction `t`'s outcome: `(lanes,)` win flags and prices paid."""


# Results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """Totals over a set of episodes, with the published table's ratios.

    `cpm` is spend per impression in log units (the table's CPM) and `ecpc` the
    spend per click in money (`spend / 1000 / clicks`), as the published code
    computes them.
    """

    episodes: int
    auctions: int
    impressions: int
    clicks: int
    spend: int
    budget: int
    expected_clicks: float
    cpm: float
    ecpc: float
    win_rate: float

    def to_dict(self) -> dict[str, Any]:
        """Return the summary as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True, eq=False)
class RunResult:
    """Per-lane outcomes of one batch of episodes.

    Attributes:
        budget: Each lane's budget.
        auctions: `(lanes,)` auctions replayed.
        impressions: `(lanes,)` auctions won.
        clicks: `(lanes,)` clicks won.
        spend: `(lanes,)` total paid.
        expected_clicks: `(lanes,)` sum of pCTR over the auctions won.
        spend_curve: `(lanes, horizon)` spend after each auction, when recorded.
    """

    budget: int
    auctions: np.ndarray
    impressions: np.ndarray
    clicks: np.ndarray
    spend: np.ndarray
    expected_clicks: np.ndarray
    spend_curve: np.ndarray | None = None

    def summary(self, lanes: np.ndarray | slice | None = None) -> Summary:
        """Add up the lanes (all of them by default)."""
        pick = slice(None) if lanes is None else lanes
        auctions = int(self.auctions[pick].sum())
        impressions = int(self.impressions[pick].sum())
        clicks = int(self.clicks[pick].sum())
        spend = int(self.spend[pick].sum())
        episodes = int(np.asarray(self.auctions[pick]).shape[0])
        return Summary(
            episodes=episodes,
            auctions=auctions,
            impressions=impressions,
            clicks=clicks,
            spend=spend,
            budget=self.budget * episodes,
            expected_clicks=float(self.expected_clicks[pick].sum()),
            cpm=spend / impressions if impressions else 0.0,
            ecpc=spend / 1000.0 / clicks if clicks else float("inf"),
            win_rate=impressions / auctions if auctions else 0.0,
        )


# The environment ------------------------------------------------------------------


class AuctionEnv:
    """Budgeted episodes over an auction log, replayed for a bidder.

    Args:
        log: The auction log.
        c0: Budget ratio in (0, 1]; each episode's budget is
            `budget_for(log.info.cpm_train, horizon, c0)`.
        horizon: Auctions per episode (T).
        max_bid: Highest bid placed; larger bids are capped.

    Raises:
        LearningError: If `c0`, `horizon` or `max_bid` is out of range, or the
            log is shorter than two episodes (no train/eval split).
    """

    def __init__(
        self,
        log: AuctionLog,
        c0: float,
        horizon: int = DEFAULT_HORIZON,
        max_bid: float = MAX_BID,
    ) -> None:
        check_protocol(horizon, c0)
        if not max_bid > 0:
            raise LearningError(f"`max_bid` must be positive, but got {max_bid!r}")
        self.log = log
        self.c0 = float(c0)
        self.horizon = int(horizon)
        self.max_bid = float(max_bid)
        self.budget = budget_for(log.info.cpm_train, self.horizon, self.c0)
        self.n_full = len(log) // self.horizon
        self.n_episodes = -(-len(log) // self.horizon)
        if self.n_full < 2:
            raise LearningError(
                f"`horizon` {horizon} leaves {self.n_full} full episode(s) in a log "
                f"of {len(log)} auctions; at least 2 are needed to split train/eval"
            )

    # Episodes and splits ----------------------------------------------------------

    def episodes(self, split: Split) -> np.ndarray:
        """Return the episode indices of `split` (`train`, `eval` or `full`).

        Raises:
            LearningError: If `split` is not one of them.
        """
        half = self.n_full // 2
        if split == "train":
            return np.arange(0, half)
        if split == "eval":
            return np.arange(half, self.n_full)
        if split == "full":
            return np.arange(0, self.n_episodes)
        raise LearningError(f"`split` must be one of {SPLITS}, but got {split!r}")

    def split_bounds(self, split: Split) -> tuple[int, int]:
        """Return the `[start, end)` auction rows that `split` covers."""
        ids = self.episodes(split)
        return int(ids[0]) * self.horizon, min(
            (int(ids[-1]) + 1) * self.horizon, len(self.log)
        )

    def mean_pctr(self, split: Split = "train") -> float:
        """Return the mean pCTR over the auctions of `split`."""
        start, end = self.split_bounds(split)
        return float(self.log.pctr[start:end].mean())

    # Replay -----------------------------------------------------------------------

    def run(
        self, bidder: Bidder, episodes: np.ndarray | list[int], *, record: bool = False
    ) -> RunResult:
        """Replay `episodes` (indices, repeats allowed) side by side for `bidder`.

        Args:
            bidder: The strategy; lane `i` plays episode `episodes[i]`.
            episodes: Episode indices in `[0, n_episodes)`.
            record: Keep each lane's spend after every auction.

        Raises:
            LearningError: If an index is out of range.
        """
        ids = np.asarray(episodes, dtype=np.int64).reshape(-1)
        if ids.size == 0 or ids.min() < 0 or ids.max() >= self.n_episodes:
            raise LearningError(
                f"`episodes` must be non-empty indices in [0, {self.n_episodes}), "
                f"but got {ids[:5].tolist()}..."
            )
        return self.run_windows(bidder, ids * self.horizon, record=record)

    def run_windows(
        self, bidder: Bidder, starts: np.ndarray, *, record: bool = False
    ) -> RunResult:
        """Replay episodes that start at arbitrary auction rows `starts`.

        Each lane plays up to `horizon` auctions from its start (fewer at the end
        of the log). Training draws windows at random offsets inside its split, so
        a learner sees many more distinct episodes than the split's count.

        Args:
            bidder: The strategy, one lane per start.
            starts: `(lanes,)` first auction row of each episode.
            record: Keep each lane's spend after every auction.
        """
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        n, horizon = len(self.log), self.horizon
        if starts.size == 0 or starts.min() < 0 or starts.max() >= n:
            raise LearningError(
                f"`starts` must be non-empty rows in [0, {n}), but got "
                f"{starts[:5].tolist()}..."
            )
        lanes = starts.shape[0]
        rows = starts[:, None] + np.arange(horizon)[None, :]
        live = rows < n
        rows = np.minimum(rows, n - 1)
        prices = np.where(live, self.log.prices[rows], np.iinfo(np.int64).max)
        pctr = np.where(live, self.log.pctr[rows], 0.0)
        clicks = np.where(live, self.log.clicks[rows], 0)

        remaining = np.full(lanes, self.budget, dtype=np.int64)
        impressions = np.zeros(lanes, dtype=np.int64)
        won_clicks = np.zeros(lanes, dtype=np.int64)
        expected = np.zeros(lanes, dtype=np.float64)
        curve = np.zeros((lanes, horizon), dtype=np.int64) if record else None
        bidder.reset(
            EpisodeContext(
                lanes=lanes,
                budget=self.budget,
                horizon=horizon,
                cpm_train=self.log.info.cpm_train,
            )
        )
        for t in range(horizon):
            bids = np.minimum(bidder.bid(t, pctr[:, t], remaining), self.max_bid)
            price = prices[:, t]
            # Capping the bid at the budget left loses every auction priced above it.
            won = (bids >= price) & (price <= remaining)
            cost = np.where(won, price, 0)
            remaining -= cost
            impressions += won
            won_clicks += np.where(won, clicks[:, t], 0)
            expected += np.where(won, pctr[:, t], 0.0)
            if curve is not None:
                curve[:, t] = self.budget - remaining
            bidder.observe(t, won, cost)
        return RunResult(
            budget=self.budget,
            auctions=live.sum(axis=1),
            impressions=impressions,
            clicks=won_clicks,
            spend=self.budget - remaining,
            expected_clicks=expected,
            spend_curve=curve,
        )

    def run_episode(self, bidder: Bidder, episode: int) -> Summary:
        """Replay one episode and return its totals."""
        return self.run(bidder, [episode]).summary()

    def evaluate(
        self, bidder: Bidder, episodes: Split | np.ndarray | list[int]
    ) -> Summary:
        """Replay a split (or explicit episode indices) and return its totals."""
        ids = self.episodes(episodes) if isinstance(episodes, str) else episodes
        return self.run(bidder, ids).summary()
