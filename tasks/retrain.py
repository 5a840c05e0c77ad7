"""Periodic retraining from our own decisions and their feedback (`adorch.retrain`).

Celery beat sends `adorch.retrain` on a schedule (`beat_schedule` below, merged into
the app's configuration). The task:

1. counts the decisions appended to the decision stream (`settings.key("decisions")`,
   written by the reducer) since the last retrain, and stops when there are fewer
   than `min_new` or when another retrain holds the lock;
2. reads the newest `max_rows` decisions old enough for their clicks to have
   arrived (`min_age_s`), and joins the click events of the feedback stream
   (`settings.feedback_stream`) by decision id;
3. turns them into a `StreamLog`, the same arrays `rl.trainer` reads from the Open
   Bandit Dataset: the context encoded with `ad_orchestrator.features` exactly as
   the serving agent encodes it, one action per ad id seen, Policy's allowed set as
   the mask, the click as the reward and the logged propensity as the pscore;
4. runs the gated promotion of `rl.promote` on it: the new weights serve only if a
   paired bootstrap on the later part of the window shows they are not worse than
   the serving ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis
from celery import shared_task

from ad_orchestrator.errors import LearningError
from ad_orchestrator.features import (
    DEVICE_CLASSES,
    N_POSITIONS,
    ContextFields,
    encode_ads,
    encode_context,
)
from ad_orchestrator.settings import REPO_ROOT, Settings
from ad_orchestrator.weights import WeightStore
from rl.envs.obd import BanditLog

logger = logging.getLogger(__name__)

TASK_NAME = "adorch.retrain"
DEFAULT_EVERY_S = 3600.0
DEFAULT_MIN_NEW = 1000
DEFAULT_MIN_CLICKS = 5
DEFAULT_MAX_ROWS = 200_000
DEFAULT_MIN_AGE_S = 300.0
DEFAULT_STEPS = 800
LOCK_TTL_S = 3600
OUT_DIR = REPO_ROOT / "artifacts" / "retrain"
_READ_CHUNK = 5000

_LOG_SKIPPED = "retrain skipped: %s"
# Where `encode_context` puts the slot position's one-hot (after time and device).
_POSITION_AT = 4 + len(DEVICE_CLASSES)
_POSITION_COLUMNS = slice(_POSITION_AT, _POSITION_AT + N_POSITIONS)


# The log ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StreamLog(BanditLog):
    """A `BanditLog` built from our decision stream instead of the OBD files.

    Our requests carry OpenRTB slot positions 0..3 (0: unknown), encoded by
    `encode_context` into its `N_POSITIONS` slots. To fit the layout `rl.ope`
    reads (1-based positions, `len_list` of them), `positions` holds the slot
    position plus one and `len_list` is `N_POSITIONS`; `context_fields` maps back,
    so a context re-encoded at any position is exactly what the serving agent
    would have encoded there.

    Attributes:
        fields: `(n,)` object array, each row's `ContextFields` as logged.
    """

    fields: np.ndarray = field(
        default_factory=lambda: np.empty(0, dtype=object), repr=False
    )

    @property
    def len_list(self) -> int:
        """Number of encodable positions."""
        return N_POSITIONS

    def contexts_at(self, position: int) -> np.ndarray:
        """Return `(n, CONTEXT_DIM)` contexts as if shown at 1-based `position`.

        Only the position one-hot moves, to slot `position - 1`, as
        `encode_context` would set it (the test suite checks the two agree).
        """
        out = np.array(self.contexts, copy=True)
        out[:, _POSITION_COLUMNS] = 0.0
        slot = min(max(position - 1, 0), N_POSITIONS - 1)
        out[:, _POSITION_COLUMNS.start + slot] = 1.0
        return out

    def context_fields(self, row: int, position: int | None = None) -> ContextFields:
        """Return row `row`'s context, optionally at another 1-based position."""
        logged: ContextFields = self.fields[row]
        if position is None:
            return logged
        return replace(logged, position=position - 1)

    def subset(self, rows: np.ndarray | slice) -> StreamLog:
        """Return the log restricted to `rows`."""
        part = super().subset(rows)
        if not isinstance(part, StreamLog):  # BanditLog.subset keeps the class
            raise LearningError("BanditLog.subset must keep the log's class")
        return replace(part, fields=self.fields[rows])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields_of(entry: Mapping[str, str], stamp: datetime) -> ContextFields:
    context = json.loads(entry.get("context") or "{}")
    device = context.get("device_class") or "unknown"
    hour = context.get("hour")
    weekday = context.get("weekday")
    user = context.get("user_features") or {}
    return ContextFields(
        hour=int(stamp.hour if hour is None else hour),
        weekday=int(stamp.weekday() if weekday is None else weekday),
        device_class=device if device in DEVICE_CLASSES else "other",
        country=context.get("country"),
        position=int(context.get("position") or 0),
        user_features={
            str(k): v if isinstance(v, str) else float(v) for k, v in user.items()
        },
    )


def _stamp(raw: str) -> datetime:
    stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def build_log(
    decisions: Sequence[Mapping[str, str]],
    clicked: Iterable[str],
    ad_features: Mapping[str, Mapping[str, str | float]],
) -> tuple[StreamLog, np.ndarray]:
    """Turn decision records and their clicks into a log and Policy's masks.

    Args:
        decisions: Decision stream entries (str fields), oldest first.
        clicked: Decision ids that got at least one click.
        ad_features: Each ad's own features, by ad id (the reducer's `ads` hash).

    Returns:
        The log, time-ordered, and the `(n, n_ads)` bool mask of the ads Policy
        allowed among each request's candidates.

    Raises:
        LearningError: No usable decision (each needs a chosen ad among its
            candidates and a positive propensity).
    """
    clicks = set(clicked)
    rows = []
    dropped = 0
    for entry in decisions:
        chosen = entry.get("chosen") or ""
        candidates = json.loads(entry.get("candidates") or "[]")
        propensity = float(entry.get("propensity") or 0.0)
        if not chosen or chosen not in candidates or not 0.0 < propensity <= 1.0:
            dropped += 1
            continue
        allowed = set(json.loads(entry.get("allowed") or "[]")) & set(candidates)
        allowed.add(chosen)  # it was served, so it was allowed
        stamp = _stamp(entry["ts"])
        rows.append((entry, chosen, candidates, allowed, propensity, stamp))
    if not rows:
        raise LearningError(
            f"none of the {len(decisions)} decision records is usable (each needs a "
            "chosen ad among its candidates and a propensity in (0, 1]); "
            f"{dropped} dropped"
        )
    if dropped:
        logger.info("retrain dropped %d unusable decision records", dropped)
    rows.sort(key=lambda row: row[5])

    ad_ids = sorted({ad for row in rows for ad in row[2]})
    index = {ad: i for i, ad in enumerate(ad_ids)}
    n, n_ads = len(rows), len(ad_ids)
    masks = np.zeros((n, n_ads), dtype=bool)
    for i, row in enumerate(rows):
        masks[i, [index[ad] for ad in row[3]]] = True
    fields = np.empty(n, dtype=object)
    fields[:] = [_fields_of(row[0], row[5]) for row in rows]
    item_features = tuple(dict(ad_features.get(ad, {})) for ad in ad_ids)
    stamps = np.array(
        [row[5].replace(tzinfo=None) for row in rows], dtype="datetime64[ns]"
    )
    log = StreamLog(
        policy="stream",
        campaign="all",
        item_ids=np.asarray(ad_ids, dtype=object),
        item_features=item_features,
        item_encodings=encode_ads(item_features),
        contexts=encode_context(list(fields)),
        # TODO(#3): the decision stream does not carry the user's item affinities,
        # which the serving agent feeds to the network; they train as 0 here.
        affinity=np.zeros((n, n_ads), dtype=np.float32),
        actions=np.asarray([index[row[1]] for row in rows], dtype=np.int64),
        rewards=np.asarray(
            [1.0 if row[0]["decision_id"] in clicks else 0.0 for row in rows],
            dtype=np.float32,
        ),
        pscore=np.asarray([row[4] for row in rows], dtype=np.float64),
        positions=np.asarray(
            [min(max(f.position, 0), N_POSITIONS - 1) + 1 for f in fields],
            dtype=np.int64,
        ),
        timestamps=stamps,
        user_features=np.empty((n, 0), dtype=object),
        fields=fields,
    )
    return log, masks


# Reading the streams ----------------------------------------------------------------


def _entries(
    client: Any, stream: str, start: str, end: str = "+"
) -> Iterable[tuple[str, dict[str, str]]]:
    cursor = start
    while True:
        chunk = client.xrange(stream, min=cursor, max=end, count=_READ_CHUNK)
        if not chunk:
            return
        for entry_id, raw in chunk:
            yield _text(entry_id), {_text(k): _text(v) for k, v in raw.items()}
        last = _text(chunk[-1][0])
        cursor = "(" + last
        if len(chunk) < _READ_CHUNK:
            return


def read_decisions(
    client: Any,
    settings: Settings,
    *,
    max_rows: int,
    min_age_s: float,
    now: float | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """Return the newest `max_rows` decisions older than `min_age_s`, oldest first."""
    now = time.time() if now is None else now
    # An id without its sequence number means the whole millisecond, as an end.
    newest = str(int((now - min_age_s) * 1000))
    found = client.xrevrange(
        settings.key("decisions"), max=newest, min="-", count=max_rows
    )
    return [
        (_text(entry_id), {_text(k): _text(v) for k, v in raw.items()})
        for entry_id, raw in reversed(found)
    ]


def read_clicks(client: Any, settings: Settings, since_id: str) -> set[str]:
    """Return the ids of decisions clicked, from feedback appended since `since_id`.

    Feedback always follows its decision, so the feedback stream is read from the
    oldest decision's stream id on.
    """
    return {
        fields["decision_id"]
        for _, fields in _entries(client, settings.feedback_stream, since_id)
        if fields.get("kind") == "click"
    }


def read_ad_features(client: Any, settings: Settings) -> dict[str, dict[str, Any]]:
    """Return every logged ad's own features (the reducer's `ads` hash)."""
    raw = client.hgetall(settings.key("ads"))
    return {_text(k): json.loads(_text(v)) for k, v in raw.items()}


# The task's work ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RetrainOptions:
    """When to retrain and how much; defaults from settings where they exist."""

    min_new: int = DEFAULT_MIN_NEW
    """New decisions since the last retrain needed to start one."""
    min_clicks: int = DEFAULT_MIN_CLICKS
    """Clicks needed in the window; fewer makes every estimate noise."""
    max_rows: int = DEFAULT_MAX_ROWS
    """Newest decisions used for one retrain."""
    min_age_s: float = DEFAULT_MIN_AGE_S
    """Decisions younger than this wait for their clicks."""
    steps: int = DEFAULT_STEPS
    """Gradient steps."""
    force: bool = False
    """Promote whatever the gate says (never from beat)."""
    out_dir: Path = OUT_DIR
    """Where the report and the learning curves go."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RetrainOptions:
        """Read `retrain_*` settings when the settings define them."""
        found = {
            name: getattr(settings, f"retrain_{name}")
            for name in ("min_new", "min_clicks", "max_rows", "min_age_s", "steps")
            if getattr(settings, f"retrain_{name}", None) is not None
        }
        return cls(**{**found, **overrides})


def retrain(
    settings: Settings,
    client: Any,
    options: RetrainOptions | None = None,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Retrain the Content network from our own logs when enough is new.

    Args:
        settings: Service settings.
        client: A Redis client that returns bytes (the weight store needs it).
        options: Thresholds and sizes.
        now: Current time (tests).

    Returns:
        A JSON-ready summary: `status` is `skipped` (with `reason`), `refused` or
        `promoted` (with `version`).
    """
    options = options or RetrainOptions.from_settings(settings)
    lock = settings.key("retrain", "lock")
    if not client.set(lock, str(time.time()), nx=True, ex=LOCK_TTL_S):
        return _skip("another retrain is running")
    try:
        return _retrain_locked(settings, client, options, now)
    finally:
        client.delete(lock)


def _skip(reason: str, **extra: Any) -> dict[str, Any]:
    logger.info(_LOG_SKIPPED, reason)
    return {"status": "skipped", "reason": reason, **extra}


def _retrain_locked(
    settings: Settings, client: Any, options: RetrainOptions, now: float | None
) -> dict[str, Any]:
    # Imported here: the trainer pulls in torch and scipy, which a worker that
    # never retrains does not need at import.
    from rl.promote import train_and_promote
    from rl.trainer import TrainConfig

    marker = settings.key("retrain", "last_id")
    last = _text(client.get(marker) or b"0-0")
    entries = read_decisions(
        client,
        settings,
        max_rows=options.max_rows,
        min_age_s=options.min_age_s,
        now=now,
    )
    new = sum(1 for entry_id, _ in entries if _stream_id(entry_id) > _stream_id(last))
    if new < options.min_new:
        return _skip(
            f"{new} new decisions since the last retrain, {options.min_new} needed",
            new=new,
        )
    clicked = read_clicks(client, settings, entries[0][0])
    decisions = [fields for _, fields in entries]
    log, masks = build_log(decisions, clicked, read_ad_features(client, settings))
    n_clicks = int(log.rewards.sum())
    if n_clicks < options.min_clicks:
        return _skip(
            f"{n_clicks} clicks among {log.n_rounds} decisions, "
            f"{options.min_clicks} needed",
            new=new,
        )

    config = TrainConfig(
        steps=options.steps,
        eval_every=0,
        n_bootstrap=300,
        batch_size=min(128, max(1, log.n_rounds // 4)),
    )
    outcome = train_and_promote(
        settings,
        config,
        force=options.force,
        store=WeightStore(client, settings),
        log=log,
        masks=masks,
        data_description={
            "source": "decision stream",
            "stream": settings.key("decisions"),
            "first_id": entries[0][0],
            "last_id": entries[-1][0],
            "n_rows": log.n_rounds,
            "n_ads": log.n_actions,
            "clicks": n_clicks,
        },
        out_dir=options.out_dir,
        progress=False,
        show=False,
    )
    client.set(marker, entries[-1][0])
    summary = {
        "status": "promoted" if outcome.decision.promote else "refused",
        "version": outcome.version,
        "new": new,
        "rows": log.n_rounds,
        "clicks": n_clicks,
        "reason": outcome.decision.reason,
        "report": str(outcome.report_path),
    }
    logger.info("retrain %s", summary)
    return summary


def _stream_id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


# Celery -------------------------------------------------------------------------------


def make_beat_schedule(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Return the beat entry of the periodic retrain, to merge into the app config.

    The period is `settings.retrain_every_s` when the settings define it, else an
    hour. The task expires after one period, so a backlog of retrains never piles
    up behind a busy worker.
    """
    every = float(getattr(settings, "retrain_every_s", None) or DEFAULT_EVERY_S)
    return {
        "retrain-content": {
            "task": TASK_NAME,
            "schedule": every,
            "options": {"expires": every},
        }
    }


beat_schedule = make_beat_schedule()
"""The beat entry with the default period; `make_beat_schedule(settings)` reads
the configured one. Merge it into the app's `beat_schedule`."""


# A shared task binds to whichever app the process runs, so this module never
# imports `ad_orchestrator.app`, and the app can import it while it is being built.
@shared_task(name=TASK_NAME)
def retrain_task(**overrides: Any) -> dict[str, Any]:
    """Retrain the Content network from our decisions and feedback, gated."""
    from ad_orchestrator.app import runtime

    current = runtime()
    # The weight store reads binary blobs: a client that does not decode.
    client = redis.Redis.from_url(current.redis_url)
    try:
        options = RetrainOptions.from_settings(current.settings, **overrides)
        return retrain(current.settings, client, options)
    finally:
        client.close()
