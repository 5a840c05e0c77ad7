"""Tests of the array-backed replay buffer in `rl.buffer`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ad_orchestrator.errors import LearningError
from rl.buffer import ReplayBuffer


def test_ring_overwrites_oldest_first() -> None:
    """Past capacity, the oldest transitions are replaced and size stays capped."""
    buffer = ReplayBuffer(3, (1,), 2, store_next_obs=False)
    for i in range(5):
        buffer.add(np.array([float(i)]), i % 2, float(i))
    assert len(buffer) == 3
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]


def test_add_batch_wraps_around() -> None:
    """A batch that crosses the end of the arrays continues at the start."""
    buffer = ReplayBuffer(4, (1,), 2, store_next_obs=False)
    buffer.add_batch(np.zeros((3, 1)), np.zeros(3, int), np.zeros(3))
    buffer.add_batch(np.ones((2, 1)), np.ones(2, int), np.ones(2))
    assert buffer.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert len(buffer) == 4


def test_sample_returns_tensors_of_the_right_shapes() -> None:
    """Samples are torch tensors with consistent rows, masks included."""
    buffer = ReplayBuffer(10, (3,), 4, store_masks=True)
    mask = np.array([True, False, True, True])
    for i in range(10):
        obs = np.full(3, i, dtype=np.float32)
        buffer.add(obs, 2, float(i), obs + 1, i == 9, mask, mask)
    batch = buffer.sample(6, np.random.default_rng(0))
    assert isinstance(batch.obs, torch.Tensor) and batch.obs.shape == (6, 3)
    assert batch.actions.dtype == torch.int64 and batch.actions.shape == (6,)
    assert torch.equal(batch.obs[:, 0], batch.rewards)  # rows stay aligned
    assert torch.equal(batch.next_obs[:, 0], batch.rewards + 1)
    assert batch.masks is not None and not batch.masks[:, 1].any()


def test_multi_part_observations_come_back_as_tuples() -> None:
    """An observation with two parts is stored and sampled part by part."""
    buffer = ReplayBuffer(5, [(2,), (3,)], 3, store_next_obs=False)
    buffer.add((np.ones(2), np.zeros(3)), 1, 1.0)
    batch = buffer.sample(2, np.random.default_rng(0))
    assert isinstance(batch.obs, tuple) and len(batch.obs) == 2
    assert batch.obs[0].shape == (2, 2) and batch.obs[1].shape == (2, 3)
    assert batch.next_obs is None


def test_sampling_is_seeded() -> None:
    """The same generator seed draws the same rows."""
    buffer = ReplayBuffer(50, (1,), 2, store_next_obs=False)
    buffer.add_batch(np.arange(50.0)[:, None], np.zeros(50, int), np.arange(50.0))
    first = buffer.sample(8, np.random.default_rng(5)).rewards
    second = buffer.sample(8, np.random.default_rng(5)).rewards
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obs": np.zeros((2, 2))}, "`obs` must have shape"),
        ({"actions": np.array([0, 5])}, "`actions` must lie in"),
        ({"rewards": np.zeros(3)}, "`actions` and `rewards` must both"),
        ({"masks": np.ones((2, 3), bool)}, "`masks` must have shape"),
        ({"next_obs": None}, "`next_obs` is required"),
    ],
)
def test_add_batch_rejects_bad_inputs(kwargs: dict, match: str) -> None:
    """Each malformed argument is named in the error."""
    buffer = ReplayBuffer(10, (1,), 2, store_masks=True)
    args = {
        "obs": np.zeros((2, 1)),
        "actions": np.array([0, 1]),
        "rewards": np.zeros(2),
        "next_obs": np.zeros((2, 1)),
    } | kwargs
    with pytest.raises(LearningError, match=match):
        buffer.add_batch(**args)


def test_empty_buffer_cannot_be_sampled() -> None:
    """Sampling before adding explains what to do."""
    with pytest.raises(LearningError, match="empty buffer"):
        ReplayBuffer(4, (1,), 2).sample(1, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"obs": np.zeros(2)}, "`obs` must have shape \\(1,\\)"),
        ({"action": 2}, "`action` must lie in \\[0, 2\\)"),
        ({"next_obs": None}, "`next_obs` is required"),
    ],
)
def test_add_rejects_bad_inputs(kwargs: dict, match: str) -> None:
    """`add`'s quick path still names a malformed argument."""
    buffer = ReplayBuffer(4, (1,), 2)
    args = {"obs": np.zeros(1), "action": 0, "reward": 1.0, "next_obs": np.zeros(1)}
    with pytest.raises(LearningError, match=match):
        buffer.add(**(args | kwargs))
    assert len(buffer) == 0
