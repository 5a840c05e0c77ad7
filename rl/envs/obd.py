"""The Open Bandit Dataset as arrays, a replay environment, and our requests.

The Open Bandit Dataset (Saito et al., 2021; the sample ships in `data/obd/`) logs
ZOZOTOWN's fashion recommendations: each row is one impression of one item at one
of three positions, with the click, the propensity of that (item, position) under
the logging policy (uniform random or Bernoulli Thompson sampling), hashed user
features and user-item affinities. `load_obd` turns one `<policy>/<campaign>` log
into a `BanditLog` whose contexts and item encodings come from
`ad_orchestrator.features`, the encoding the serving agents use, so that a network
trained here reads exactly what it reads in production.

Positions keep the dataset's numbering (1, 2, 3) everywhere a request or a context
sees them; arrays indexed by position (`action_dist[..., k]`) use `position - 1`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ad_orchestrator.errors import LearningError
from ad_orchestrator.features import (
    DEVICE_CLASSES,
    N_POSITIONS,
    ContextFields,
    encode_ads,
    encode_context,
)

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "obd"
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = tuple(f"user_feature_{k}" for k in range(4))
ITEM_NUMERIC = ("item_feature_0",)
ITEM_CATEGORICAL = ("item_feature_1", "item_feature_2", "item_feature_3")
LEN_LIST = 3
# Where `encode_context` puts its position one-hot (after time and device).
_POSITION_AT = 4 + len(DEVICE_CLASSES)
_POSITION_COLUMNS = slice(_POSITION_AT, _POSITION_AT + N_POSITIONS)


def without_position(contexts: np.ndarray) -> np.ndarray:
    """Return a copy of `(n, CONTEXT_DIM)` contexts with the position zeroed.

    Reward models that give the position its own term (`rl.ope.RewardModel`)
    read contexts through this, so one context serves every position.
    """
    out = np.array(contexts, copy=True)
    out[:, _POSITION_COLUMNS] = 0.0
    return out


@dataclass(frozen=True, eq=False)
class BanditLog:
    """A logged bandit dataset as aligned arrays, one row per impression.

    Attributes:
        policy: Logging policy name (`random` or `bts`).
        campaign: Campaign name (`all`, `men` or `women`).
        item_ids: `(n_actions,)` the dataset's item ids; action `a` is item
            `item_ids[a]`.
        item_features: One dict per item (`item_feature_0` numeric, the others
            categorical strings), as a candidate ad carries them.
        item_encodings: `(n_actions, AD_DIM)` `encode_ads` of the items, with the
            affinity column 0 (each row's affinity is in `affinity`).
        contexts: `(n, CONTEXT_DIM)` `encode_context` of each row, at its
            logged position.
        affinity: `(n, n_actions)` the user's affinity for each item.
        actions: `(n,)` index of the shown item.
        rewards: `(n,)` 1.0 for a click, else 0.0.
        pscore: `(n,)` the logging policy's probability of the shown item at the
            shown position.
        positions: `(n,)` the position shown at, 1-based.
        timestamps: `(n,)` UTC times, `datetime64[ns]`.
        user_features: `(n, 4)` the hashed user features as strings.
    """

    policy: str
    campaign: str
    item_ids: np.ndarray
    item_features: tuple[dict[str, str | float], ...]
    item_encodings: np.ndarray
    contexts: np.ndarray
    affinity: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    pscore: np.ndarray
    positions: np.ndarray
    timestamps: np.ndarray
    user_features: np.ndarray
    _candidates: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def n_rounds(self) -> int:
        """Number of logged impressions."""
        return int(self.actions.shape[0])

    @property
    def n_actions(self) -> int:
        """Number of items (actions)."""
        return int(self.item_ids.shape[0])

    @property
    def len_list(self) -> int:
        """Number of positions."""
        return LEN_LIST

    @property
    def position_index(self) -> np.ndarray:
        """`(n,)` 0-based positions, for indexing `(..., len_list)` arrays."""
        return self.positions - 1

    def ads(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Return `(len(rows), n_actions, AD_DIM)` item encodings with affinities."""
        affinity = self.affinity if rows is None else self.affinity[rows]
        out = np.repeat(self.item_encodings[None], affinity.shape[0], axis=0)
        out[:, :, -1] = affinity
        return out

    def contexts_at(self, position: int) -> np.ndarray:
        """Return `(n, CONTEXT_DIM)` contexts as if every row were shown at `position`.

        Only the position one-hot changes, exactly as `encode_context` would set
        it, so this is right for any log (also one built from the decision
        stream, whose device and country `context_fields` cannot recover).

        Args:
            position: 1-based position.
        """
        out = without_position(self.contexts)
        out[:, _POSITION_AT + min(max(position, 0), N_POSITIONS - 1)] = 1.0
        return out

    def context_fields(self, row: int, position: int | None = None) -> ContextFields:
        """Return the readable context of OBD `row` (optionally at another position).

        OBD has no device or geography: those fields are `unknown` and None.
        """
        stamp = pd.Timestamp(self.timestamps[row])
        return ContextFields(
            hour=int(stamp.hour),
            weekday=int(stamp.weekday()),
            device_class="unknown",
            country=None,
            position=int(self.positions[row] if position is None else position),
            user_features=dict(
                zip(USER_FEATURES, self.user_features[row].tolist(), strict=True)
            ),
        )

    def subset(self, rows: np.ndarray | slice) -> BanditLog:
        """Return the log restricted to `rows` (sharing the item tables)."""
        return replace(
            self,
            contexts=self.contexts[rows],
            affinity=self.affinity[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            pscore=self.pscore[rows],
            positions=self.positions[rows],
            timestamps=self.timestamps[rows],
            user_features=self.user_features[rows],
        )

    def candidates(self, campaign_id: str) -> list[dict[str, Any]]:
        """Return every item as a `CandidateAd` dict, built once per log.

        The dicts are shared between calls (that is what makes converting
        thousands of rows cheap): treat them as read-only.
        """
        if not self._candidates or self._candidates[0]["campaign_id"] != campaign_id:
            self._candidates[:] = [
                {
                    "ad_id": str(item),
                    "campaign_id": campaign_id,
                    "features": dict(features),
                }
                for item, features in zip(
                    self.item_ids.tolist(), self.item_features, strict=True
                )
            ]
        return self._candidates


def load_obd(
    policy: str = "random",
    campaign: str = "all",
    data_dir: Path | str | None = None,
) -> BanditLog:
    """Load one Open Bandit Dataset log into a `BanditLog`, sorted by time.

    Args:
        policy: `random` or `bts`.
        campaign: `all`, `men` or `women`.
        data_dir: Folder holding `<policy>/<campaign>/`; the repository's
            `data/obd` by default.

    Raises:
        LearningError: If `policy` or `campaign` is unknown or the files are
            missing.
    """
    if policy not in POLICIES:
        raise LearningError(f"`policy` must be one of {POLICIES}, but got {policy!r}")
    if campaign not in CAMPAIGNS:
        raise LearningError(
            f"`campaign` must be one of {CAMPAIGNS}, but got {campaign!r}"
        )
    folder = Path(data_dir or DATA_DIR) / policy / campaign
    log_path = folder / f"{campaign}.csv.gz"
    items_path = folder / "item_context.csv"
    if not log_path.is_file() or not items_path.is_file():
        raise LearningError(
            f"OBD files not found under {folder}: expected {log_path.name} and "
            f"{items_path.name}; pass `data_dir` pointing at the `obd` folder"
        )
    frame = pd.read_csv(log_path, index_col=0)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame = frame.sort_values("timestamp", kind="stable").reset_index(drop=True)
    items = pd.read_csv(items_path, index_col=0).sort_values("item_id")

    item_ids = items["item_id"].to_numpy(np.int64)
    if not np.array_equal(item_ids, np.arange(len(item_ids))):
        raise LearningError(
            f"{items_path} must number its items 0..{len(item_ids) - 1}, but got "
            f"{item_ids[:5].tolist()}..."
        )
    item_features: list[dict[str, str | float]] = []
    for row in items.to_dict("records"):
        features: dict[str, str | float] = {n: float(row[n]) for n in ITEM_NUMERIC}
        features.update({n: str(row[n]) for n in ITEM_CATEGORICAL})
        item_features.append(features)
    affinity_columns = [f"user-item_affinity_{item}" for item in item_ids]
    stamps = frame["timestamp"]
    user = frame[list(USER_FEATURES)].astype(str).to_numpy()
    positions = frame["position"].to_numpy(np.int64)
    fields = [
        ContextFields(
            hour=hour,
            weekday=weekday,
            device_class="unknown",
            country=None,
            position=position,
            user_features=dict(zip(USER_FEATURES, features, strict=True)),
        )
        for hour, weekday, position, features in zip(
            stamps.dt.hour.tolist(),
            stamps.dt.weekday.tolist(),
            positions.tolist(),
            user.tolist(),
            strict=True,
        )
    ]
    log = BanditLog(
        policy=policy,
        campaign=campaign,
        item_ids=item_ids,
        item_features=tuple(item_features),
        item_encodings=encode_ads(item_features),
        contexts=encode_context(fields),
        affinity=frame[affinity_columns].to_numpy(np.float32),
        actions=frame["item_id"].to_numpy(np.int64),
        rewards=frame["click"].to_numpy(np.float32),
        pscore=frame["propensity_score"].to_numpy(np.float64),
        positions=positions,
        timestamps=stamps.dt.tz_localize(None).to_numpy("datetime64[ns]"),
        user_features=user,
    )
    logger.info(
        "loaded OBD %s/%s: %d rows, %d items, CTR %.4f",
        policy,
        campaign,
        log.n_rounds,
        log.n_actions,
        float(log.rewards.mean()),
    )
    return log


def train_test_split(log: BanditLog, fraction: float) -> tuple[BanditLog, BanditLog]:
    """Split a log by time: the first `fraction` of rows train, the rest test.

    Evaluating on later data than the training data is what deployment looks
    like; a random split would leak the future into training.

    Raises:
        LearningError: If `fraction` leaves either side empty.
    """
    cut = int(round(log.n_rounds * fraction))
    if not 0 < cut < log.n_rounds:
        raise LearningError(
            f"`fraction` must leave rows on both sides of the split, but {fraction} "
            f"of {log.n_rounds} rows gives {cut}; use a value in (0, 1)"
        )
    return log.subset(slice(0, cut)), log.subset(slice(cut, None))


def row_to_request(log: BanditLog, i: int, campaign_id: str) -> dict[str, Any]:
    """Return logged impression `i` as an `AdRequest` dict.

    The user carries the row's hashed features and its non-zero item affinities
    (keyed by ad id; an absent ad means affinity 0, as `encode_ads` assumes);
    the one slot is the logged position; every item of the campaign is a
    candidate.

    Args:
        log: The log.
        i: Row index.
        campaign_id: Campaign id given to every candidate.
    """
    affinity = log.affinity[i]
    nonzero = np.flatnonzero(affinity)
    position = int(log.positions[i])
    stamp = pd.Timestamp(log.timestamps[i], tz="UTC")
    return {
        "request_id": f"obd-{log.policy}-{log.campaign}-{i}",
        "timestamp": stamp.isoformat(),
        "user": {
            "features": dict(
                zip(USER_FEATURES, log.user_features[i].tolist(), strict=True)
            ),
            "item_affinity": {
                str(log.item_ids[a]): float(affinity[a]) for a in nonzero.tolist()
            },
        },
        "slots": [{"slot_id": f"pos{position}", "position": position}],
        "candidates": list(log.candidates(campaign_id)),
    }


class BanditReplayEnv:
    """Replay a logged bandit dataset as one-step episodes.

    `reset` moves to the next logged impression and returns its observation,
    `(context (CONTEXT_DIM,), affinity (n_actions,))`, with the candidate mask in
    `info["action_mask"]`; the item encodings, the same for every row, are
    `item_encodings`. `step(action)` ends the episode.

    Only the logged action's reward is known. This is the replay method (Li et
    al., WSDM 2011): when the chosen action equals the logged one, the logged
    click is revealed (`info["matched"]` is True); otherwise the reward is 0 and
    `info["matched"]` is False, and an evaluation must drop that step. With a
    uniformly random logging policy, the mean reward over matched steps is an
    unbiased estimate of the policy's CTR. Steps with other logging policies are
    biased; use `rl.ope` for those.

    Args:
        log: The logged data.
        masks: `(n, n_actions)` bool, allowed items per row (Policy's denials
            are False); None allows every item.
        shuffle: Visit rows in a seeded random order instead of time order.
    """

    def __init__(
        self,
        log: BanditLog,
        masks: np.ndarray | None = None,
        *,
        shuffle: bool = False,
    ) -> None:
        if masks is not None:
            masks = np.asarray(masks, dtype=bool)
            if masks.shape != (log.n_rounds, log.n_actions):
                raise LearningError(
                    f"`masks` must have shape {(log.n_rounds, log.n_actions)}, but "
                    f"got {masks.shape}"
                )
        self.log = log
        self.masks = masks
        self.shuffle = shuffle
        self.n_actions = log.n_actions
        self.item_encodings = log.item_encodings
        self.obs_shape: Sequence[tuple[int, ...]] = (
            (log.contexts.shape[1],),
            (log.n_actions,),
        )
        self._all = np.ones(log.n_actions, dtype=bool)
        self._order = np.arange(log.n_rounds)
        self._cursor = -1
        self._rng = np.random.default_rng()

    @property
    def row(self) -> int:
        """The log row of the current episode."""
        return int(self._order[self._cursor % self.log.n_rounds])

    def _observe(self) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
        row = self.row
        mask = self._all if self.masks is None else self.masks[row]
        obs = (self.log.contexts[row], self.log.affinity[row])
        return obs, {"action_mask": mask, "row": row}

    def reset(
        self, *, seed: int | None = None
    ) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
        """Start the next episode (the first one, when `seed` is given)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._cursor = -1
            self._order = (
                self._rng.permutation(self.log.n_rounds)
                if self.shuffle
                else np.arange(self.log.n_rounds)
            )
        self._cursor += 1
        return self._observe()

    def step(
        self, action: int
    ) -> tuple[tuple[np.ndarray, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Reveal the logged click when `action` is the logged item.

        Returns:
            `(obs, reward, terminated, truncated, info)`; the episode always
            terminates, and `obs` repeats the current observation.

        Raises:
            LearningError: If `action` is out of range or masked.
        """
        if self._cursor < 0:
            raise LearningError("call `reset` before `step`")
        obs, info = self._observe()
        if not 0 <= action < self.n_actions or not info["action_mask"][action]:
            raise LearningError(
                f"`action` {action} is not an allowed item of row {info['row']}; "
                "choose among `info['action_mask']`"
            )
        matched = int(self.log.actions[info["row"]]) == action
        reward = float(self.log.rewards[info["row"]]) if matched else 0.0
        return obs, reward, True, False, {**info, "matched": matched}
