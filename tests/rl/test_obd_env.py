"""Tests of the Open Bandit Dataset loader and replay environment."""

from __future__ import annotations

import numpy as np
import pytest

from ad_orchestrator.errors import LearningError
from ad_orchestrator.features import AD_DIM, CONTEXT_DIM, encode_ads, encode_context
from ad_orchestrator.schemas import parse_request
from rl.envs import BanditLog, BanditReplayEnv, load_obd, row_to_request
from rl.envs import train_test_split as split
from rl.envs.obd import without_position
from rl.ope_validation import empirical_action_dist


@pytest.fixture(scope="module")
def log() -> BanditLog:
    """The random-policy log of the `men` campaign (34 items)."""
    return load_obd("random", "men")


def test_log_arrays_are_aligned(log: BanditLog) -> None:
    """Every per-row array has one row per impression; items are numbered."""
    n = log.n_rounds
    assert n == 10_000 and log.n_actions == 34 and log.len_list == 3
    assert log.contexts.shape == (n, CONTEXT_DIM)
    assert log.affinity.shape == (n, 34)
    for array in (log.actions, log.rewards, log.pscore, log.positions):
        assert array.shape == (n,)
    assert set(np.unique(log.positions)) == {1, 2, 3}
    assert np.all(np.diff(log.timestamps.astype(np.int64)) >= 0)
    np.testing.assert_allclose(log.pscore, 1 / 34)  # uniform over items


def test_contexts_use_the_shared_encoding(log: BanditLog) -> None:
    """A row's context re-encoded from its readable fields is identical."""
    for row in (0, 4_321, 9_999):
        again = encode_context([log.context_fields(row)])[0]
        np.testing.assert_array_equal(again, log.contexts[row])


def test_contexts_at_other_position_change_only_position(log: BanditLog) -> None:
    """Re-encoding at another position moves just the position one-hot."""
    moved = log.contexts_at(1)
    same = without_position(log.contexts)
    np.testing.assert_array_equal(without_position(moved), same)
    assert not np.array_equal(moved, log.contexts)
    for row in (0, 777):
        again = encode_context([log.context_fields(row, position=1)])[0]
        np.testing.assert_array_equal(moved[row], again)


def test_time_ordered_split(log: BanditLog) -> None:
    """The training part ends before the test part starts."""
    train, test = split(log, 0.7)
    assert (train.n_rounds, test.n_rounds) == (7_000, 3_000)
    assert train.timestamps[-1] <= test.timestamps[0]
    np.testing.assert_array_equal(test.actions, log.actions[7_000:])


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1e-9])
def test_split_rejects_empty_sides(log: BanditLog, fraction: float) -> None:
    """A fraction that empties a side says what to use instead."""
    with pytest.raises(LearningError, match="`fraction` must leave rows"):
        split(log, fraction)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"policy": "greedy"}, "`policy` must be one of"),
        ({"campaign": "kids"}, "`campaign` must be one of"),
        ({"data_dir": "/nonexistent"}, "OBD files not found"),
    ],
)
def test_load_rejects_unknown_names(kwargs: dict, match: str) -> None:
    """Unknown policies, campaigns and folders are named."""
    with pytest.raises(LearningError, match=match):
        load_obd(**kwargs)


def test_row_to_request_is_a_valid_request_with_same_encoding(log: BanditLog) -> None:
    """A converted row parses as an `AdRequest` and encodes to the log's arrays."""
    row = int(np.flatnonzero(log.affinity.any(axis=1))[0])
    request = parse_request(row_to_request(log, row, "zozo-men"))
    assert request.slots[0].slot_id == f"pos{log.positions[row]}"
    assert [ad.ad_id for ad in request.candidates] == [str(i) for i in range(34)]
    assert {ad.campaign_id for ad in request.candidates} == {"zozo-men"}
    known = request.user.item_affinity
    affinity = [known.get(ad.ad_id, 0.0) for ad in request.candidates]
    ads = encode_ads([ad.features for ad in request.candidates], affinity)
    np.testing.assert_allclose(ads, log.ads([row])[0])
    assert request.timestamp.tzinfo is not None
    assert request.timestamp.hour == log.context_fields(row).hour


def test_candidate_list_is_built_once(log: BanditLog) -> None:
    """Converting many rows reuses one set of candidate dicts."""
    first = row_to_request(log, 0, "c")["candidates"]
    second = row_to_request(log, 1, "c")["candidates"]
    assert first is not second and first[0] is second[0]


def test_replay_reveals_only_the_logged_action(log: BanditLog) -> None:
    """Matching the logged item reveals its click; other items reveal nothing."""
    env = BanditReplayEnv(log)
    (context, affinity), info = env.reset(seed=0)
    assert context.shape == (CONTEXT_DIM,) and affinity.shape == (34,)
    assert env.item_encodings.shape == (34, AD_DIM)
    logged = int(log.actions[info["row"]])
    _, reward, done, _, step_info = env.step(logged)
    assert done and step_info["matched"] and reward == log.rewards[info["row"]]
    env.reset()
    other = (int(log.actions[env.row]) + 1) % 34
    _, reward, _, _, step_info = env.step(other)
    assert reward == 0.0 and not step_info["matched"]


def test_replay_of_uniform_policy_estimates_logged_ctr() -> None:
    """Over a uniformly logged day, replaying the log's own choices is exact and
    a random policy matches about 1/n_actions of the rows."""
    log = load_obd("random", "women")
    env = BanditReplayEnv(log, shuffle=True)
    rng = np.random.default_rng(0)
    env.reset(seed=1)
    matched = 0
    for _ in range(4_000):
        _, _, _, _, info = env.step(int(rng.integers(0, log.n_actions)))
        matched += info["matched"]
        env.reset()
    assert matched / 4_000 == pytest.approx(1 / log.n_actions, abs=0.01)


def test_replay_honours_masks(log: BanditLog) -> None:
    """A masked item is refused by `step` and flagged in the observation's mask."""
    masks = np.ones((log.n_rounds, log.n_actions), dtype=bool)
    masks[:, 5] = False
    env = BanditReplayEnv(log, masks)
    _, info = env.reset(seed=0)
    assert not info["action_mask"][5]
    with pytest.raises(LearningError, match="`action` 5 is not an allowed item"):
        env.step(5)


def test_replay_checks_mask_shape(log: BanditLog) -> None:
    """Masks of the wrong shape are named."""
    with pytest.raises(LearningError, match="`masks` must have shape"):
        BanditReplayEnv(log, np.ones((3, 3), dtype=bool))


def test_empirical_action_dist_sums_to_one_per_position() -> None:
    """The BTS estimate is a distribution over items at each position."""
    bts = load_obd("bts", "men")
    dist = empirical_action_dist(bts)
    assert dist.shape == (34, 3)
    np.testing.assert_allclose(dist.sum(axis=0), 1.0)
    top = np.bincount(bts.actions[bts.positions == 1], minlength=34).argmax()
    assert dist[:, 0].argmax() == top
