"""Tests of the DQN building blocks in `rl.dqn`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ad_orchestrator.errors import LearningError
from rl.buffer import Batch
from rl.dqn import (
    DQNConfig,
    QNetwork,
    action_probabilities,
    double_dqn_targets,
    dqn_update,
    hard_update,
    linear_epsilon,
    seed_everything,
    select_action,
    soft_update,
    train_online,
)


class FixedQ(nn.Module):
    """A 'network' that returns the same Q-values for every observation."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.values.expand(obs.shape[0], -1)


class Corridor:
    """Walk right along `length` cells to earn 1; left costs a step. Action 2 is
    forbidden (masked) everywhere and would pay 5 if ever taken."""

    n_actions = 3

    def __init__(self, length: int = 4) -> None:
        self.length = length
        self.pos = 0
        self.t = 0
        self.mask = np.array([True, True, False])

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.length, dtype=np.float32)
        obs[self.pos] = 1.0
        return obs

    def reset(self, *, seed: int | None = None) -> tuple[np.ndarray, dict]:
        self.pos, self.t = 0, 0
        return self._obs(), {"action_mask": self.mask}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        if action == 2:
            return self._obs(), 5.0, True, False, {"action_mask": self.mask}
        self.pos = min(max(self.pos + (1 if action == 1 else -1), 0), self.length - 1)
        done = self.pos == self.length - 1
        reward = 1.0 if done else 0.0
        return self._obs(), reward, done, self.t >= 20, {"action_mask": self.mask}


def test_linear_epsilon_falls_then_stays() -> None:
    """Epsilon moves linearly from start to end over `duration`, then holds."""
    assert linear_epsilon(1.0, 0.1, 10, 0) == pytest.approx(1.0)
    assert linear_epsilon(1.0, 0.1, 10, 5) == pytest.approx(0.55)
    assert linear_epsilon(1.0, 0.1, 10, 10) == pytest.approx(0.1)
    assert linear_epsilon(1.0, 0.1, 10, 1000) == pytest.approx(0.1)


def test_select_action_greedy_respects_mask() -> None:
    """With epsilon 0, the best allowed action is chosen, never a masked one."""
    q = torch.tensor([[5.0, 1.0, 2.0], [0.0, 9.0, 3.0]])
    mask = np.array([[False, True, True], [True, False, True]])
    actions = select_action(q, 0.0, mask, np.random.default_rng(0))
    assert actions.tolist() == [2, 2]


def test_select_action_exploration_stays_inside_mask() -> None:
    """With epsilon 1, actions are uniform over the allowed ones only."""
    q = np.zeros((20_000, 4))
    mask = np.tile([True, False, True, True], (20_000, 1))
    actions = select_action(q, 1.0, mask, np.random.default_rng(1))
    counts = np.bincount(actions, minlength=4) / len(actions)
    assert counts[1] == 0
    np.testing.assert_allclose(counts[[0, 2, 3]], 1 / 3, atol=0.02)


def test_action_probabilities_match_select_action() -> None:
    """The logged propensities equal the frequencies `select_action` produces."""
    q = np.array([[0.1, 0.9, 0.5, 0.2]])
    mask = np.array([[True, False, True, True]])
    probs = action_probabilities(q, 0.3, mask)
    np.testing.assert_allclose(probs, [[0.1, 0.0, 0.8, 0.1]])
    draws = select_action(
        np.repeat(q, 30_000, 0),
        0.3,
        np.repeat(mask, 30_000, 0),
        np.random.default_rng(2),
    )
    np.testing.assert_allclose(
        np.bincount(draws, minlength=4) / 30_000, probs[0], atol=0.01
    )


@pytest.mark.parametrize(
    ("q", "epsilon", "mask", "match"),
    [
        (np.zeros(3), 0.1, None, "`q_values` must have shape"),
        (np.zeros((2, 3)), 1.5, None, "`epsilon` must be in"),
        (np.zeros((2, 3)), 0.1, np.ones((2, 2), bool), "`mask` must have shape"),
        (np.zeros((2, 3)), 0.1, np.zeros((2, 3), bool), "allows no action"),
    ],
)
def test_select_action_rejects_bad_inputs(q, epsilon, mask, match) -> None:
    """Bad shapes, rates and empty masks raise an error naming the argument."""
    with pytest.raises(LearningError, match=match):
        select_action(q, epsilon, mask, np.random.default_rng(0))


def test_double_dqn_target_never_picks_masked_action() -> None:
    """The online argmax skips masked actions; the target net values the pick."""
    online = FixedQ([10.0, 1.0, 2.0])
    target = FixedQ([100.0, 7.0, 3.0])
    next_mask = torch.tensor([[False, True, True], [True, True, True]])
    targets = double_dqn_targets(
        online,
        target,
        rewards=torch.tensor([1.0, 1.0]),
        next_obs=torch.zeros(2, 1),
        dones=torch.tensor([0.0, 0.0]),
        gamma=0.5,
        next_mask=next_mask,
    )
    # Row 0: online prefers action 2 among {1, 2}; the target values it at 3.
    # Row 1: action 0 is allowed, online picks it, the target values it at 100.
    np.testing.assert_allclose(targets.numpy(), [1.0 + 0.5 * 3.0, 1.0 + 0.5 * 100.0])


def test_double_dqn_target_of_terminal_or_empty_state_is_reward() -> None:
    """Done transitions and next states with no allowed action add no value."""
    net = FixedQ([4.0, 4.0])
    targets = double_dqn_targets(
        net,
        net,
        rewards=torch.tensor([2.0, 3.0]),
        next_obs=torch.zeros(2, 1),
        dones=torch.tensor([1.0, 0.0]),
        gamma=0.9,
        next_mask=torch.tensor([[True, True], [False, False]]),
    )
    np.testing.assert_allclose(targets.numpy(), [2.0, 3.0])


def test_dqn_update_moves_q_towards_reward() -> None:
    """Repeated updates on one-step transitions fit Q(s, a) to the reward."""
    seed_everything(0)
    net = QNetwork(2, 2, hidden=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    batch = Batch(
        obs=torch.eye(2),
        actions=torch.tensor([0, 1]),
        rewards=torch.tensor([1.0, -1.0]),
        next_obs=None,
        dones=torch.ones(2),
    )
    losses = [dqn_update(net, net, optimizer, batch, 0.0, 1.0) for _ in range(300)]
    assert losses[-1] < losses[0] / 10
    q = net(torch.eye(2)).detach()
    assert q[0, 0] == pytest.approx(1.0, abs=0.1)
    assert q[1, 1] == pytest.approx(-1.0, abs=0.1)


def test_dqn_update_clips_gradients() -> None:
    """No parameter moves further than lr allows, even for a huge TD error."""
    net = FixedQ([0.0, 0.0])
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    batch = Batch(
        obs=torch.zeros(1, 1),
        actions=torch.tensor([0]),
        rewards=torch.tensor([1e6]),
        next_obs=None,
        dones=torch.ones(1),
    )
    dqn_update(net, net, optimizer, batch, 0.0, max_grad_norm=0.5)
    assert float(net.values.detach().abs().max()) == pytest.approx(0.5)


def test_dqn_update_needs_next_obs_when_discounting() -> None:
    """A discounted update without next observations says how to fix it."""
    net = FixedQ([0.0])
    batch = Batch(
        torch.zeros(1, 1), torch.tensor([0]), torch.ones(1), None, torch.ones(1)
    )
    with pytest.raises(LearningError, match="gamma=0 for one-step"):
        dqn_update(net, net, torch.optim.SGD(net.parameters(), lr=0.1), batch, 0.9, 1.0)


def test_soft_and_hard_update() -> None:
    """A soft update moves by tau; a hard update copies."""
    online, target = FixedQ([2.0]), FixedQ([0.0])
    soft_update(target, online, 0.25)
    assert float(target.values.detach()) == pytest.approx(0.5)
    hard_update(target, online)
    assert float(target.values.detach()) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("gamma", 1.5, "`gamma` must be in \\[0, 1\\]"),
        ("lr", 0.0, "`lr` must be positive"),
        ("tau", 0.0, "`tau` must be in \\(0, 1\\]"),
        ("batch_size", 0, "`batch_size` must be at least 1"),
        ("learning_starts", -1, "`learning_starts` must be non-negative"),
        ("epsilon_end", -0.1, "`epsilon_end` must be in"),
    ],
)
def test_config_rejects_bad_values(field: str, value: float, match: str) -> None:
    """Every out-of-range hyper-parameter is named in the error."""
    with pytest.raises(LearningError, match=match):
        DQNConfig(**{field: value})


def test_train_online_learns_corridor_and_never_takes_masked_action() -> None:
    """A short run solves a small corridor and the forbidden action never pays."""
    config = DQNConfig(
        total_steps=1500,
        gamma=0.9,
        learning_starts=100,
        epsilon_duration=800,
        target_update_interval=50,
        batch_size=32,
        hidden=32,
        seed=3,
    )
    result = train_online(Corridor(), config, lambda: QNetwork(4, 3, 32), (4,))
    assert result.updates == 1400
    assert max(result.returns) <= 1.0  # the masked action (worth 5) was never taken
    q = result.online(torch.eye(4)).detach()
    assert (q[:3, 1] > q[:3, 0]).all()  # right beats left before the goal


def test_train_online_is_reproducible() -> None:
    """Two runs with the same seed give identical losses."""
    config = DQNConfig(total_steps=300, learning_starts=50, gamma=0.9, seed=7)
    first = train_online(Corridor(), config, lambda: QNetwork(4, 3, 16), (4,))
    second = train_online(Corridor(), config, lambda: QNetwork(4, 3, 16), (4,))
    assert first.losses == second.losses


def test_double_dqn_skips_terminal_rows() -> None:
    """Only rows that go on are valued; a batch of terminals needs no forward."""

    class Counting(FixedQ):
        rows = 0

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            Counting.rows += obs.shape[0]
            return super().forward(obs)

    net = Counting([1.0, 3.0])
    kwargs = {"rewards": torch.tensor([0.0, 0.0, 0.0]), "next_obs": torch.zeros(3, 1)}
    targets = double_dqn_targets(
        net, net, dones=torch.tensor([1.0, 0.0, 1.0]), gamma=0.5, **kwargs
    )
    np.testing.assert_allclose(targets.numpy(), [0.0, 1.5, 0.0])
    assert Counting.rows == 2  # one live row, through online and target
    double_dqn_targets(net, net, dones=torch.ones(3), gamma=0.5, **kwargs)
    assert Counting.rows == 2
