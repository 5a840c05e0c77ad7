"""Deep Q-learning, one importable step at a time.

The module reads like a single-file DQN script: configuration, seeding, the
exploration schedule, the network, acting, the double-DQN target, the update, the
target-network sync, and finally `train_online`, the loop that strings them together
for any environment with discrete actions. Each step is a function of its own, so
the Content trainer (`rl.trainer`), Budget's pacing agent and the tests call exactly
the code the loop runs.

Action masks are first-class: a mask is a boolean array, True where an action is
allowed (Policy's denials are False). A masked action is never chosen, neither when
exploring nor greedily, and never becomes the argmax of a double-DQN target.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the conventional alias)
from tqdm.auto import tqdm

from ad_orchestrator.errors import LearningError
from rl.buffer import Batch, Observation, ReplayBuffer

logger = logging.getLogger(__name__)

LOG_PROGRESS = "dqn step=%d loss=%.5f epsilon=%.3f episodes=%d mean_return=%.4f"


# Configuration --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class DQNConfig:
    """Hyper-parameters of a DQN agent; checked when built."""

    seed: int = 0
    """Seed of python, numpy and torch generators."""
    total_steps: int = 10_000
    """Environment steps in `train_online`."""
    gamma: float = 0.99
    """Discount factor; 0 for one-step episodes (bandits)."""
    lr: float = 1e-3
    """Adam learning rate."""
    batch_size: int = 64
    """Transitions per gradient update."""
    buffer_size: int = 10_000
    """Replay buffer capacity."""
    learning_starts: int = 200
    """Steps collected before the first update."""
    train_frequency: int = 1
    """Environment steps between gradient updates."""
    target_update_interval: int = 200
    """Steps between target-network syncs."""
    tau: float = 1.0
    """Sync weight: 1.0 copies the online network, less is a soft (Polyak) update."""
    epsilon_start: float = 1.0
    """Exploration rate at step 0."""
    epsilon_end: float = 0.05
    """Exploration rate after `epsilon_duration` steps."""
    epsilon_duration: int = 5_000
    """Steps over which epsilon falls linearly."""
    max_grad_norm: float = 10.0
    """Gradients are clipped to this global norm."""
    hidden: int = 64
    """Width of the hidden layers."""

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("lr", self.lr > 0, "positive"),
            ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("epsilon_start", 0.0 <= self.epsilon_start <= 1.0, "in [0, 1]"),
            ("epsilon_end", 0.0 <= self.epsilon_end <= 1.0, "in [0, 1]"),
            ("max_grad_norm", self.max_grad_norm > 0, "positive"),
        ]
        for name in (
            "total_steps",
            "batch_size",
            "buffer_size",
            "train_frequency",
            "target_update_interval",
            "epsilon_duration",
            "hidden",
        ):
            checks.append((name, getattr(self, name) >= 1, "at least 1"))
        checks.append(("learning_starts", self.learning_starts >= 0, "non-negative"))
        for name, ok, expected in checks:
            if not ok:
                raise LearningError(
                    f"DQNConfig `{name}` must be {expected}, but got "
                    f"{getattr(self, name)!r}"
                )


# Seeding and exploration ----------------------------------------------------------


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python's, numpy's and torch's generators for a reproducible run.

    Args:
        seed: Any non-negative integer.

    Returns:
        A fresh numpy generator seeded with `seed`, for the caller's own draws.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (libraries that still use the global one)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def linear_epsilon(start: float, end: float, duration: int, step: int) -> float:
    """Return the exploration rate at `step`, falling linearly from start to end.

    Args:
        start: Rate at step 0.
        end: Rate from `duration` on.
        duration: Steps the fall takes (at least 1).
        step: The current step.
    """
    if duration < 1:
        raise LearningError(f"`duration` must be at least 1, but got {duration}")
    fraction = min(max(step, 0) / duration, 1.0)
    return start + fraction * (end - start)


# The network ----------------------------------------------------------------------


class QNetwork(nn.Module):
    """An MLP from an observation vector to one Q-value per discrete action.

    Args:
        obs_dim: Length of the observation vector.
        n_actions: Number of actions.
        hidden: Width of each of the two hidden layers.
    """

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        for name, value in (
            ("obs_dim", obs_dim),
            ("n_actions", n_actions),
            ("hidden", hidden),
        ):
            if value < 1:
                raise LearningError(f"`{name}` must be at least 1, but got {value}")
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.layers = nn.Sequential(
            nn.Linear(obs_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Map `(batch, obs_dim)` observations to `(batch, n_actions)` Q-values."""
        return self.layers(obs)


def q_values(net: nn.Module, obs: Observation) -> torch.Tensor:
    """Call `net` on an observation that may have several parts (`net(*obs)`)."""
    return net(*obs) if isinstance(obs, tuple) else net(obs)


def taken_q_values(
    net: nn.Module, obs: Observation, actions: torch.Tensor
) -> torch.Tensor:
    """Return `(batch,)` Q-values of the actions taken.

    A network that scores each action separately (Content's Q over dozens of
    candidate ads) may define `action_values(*obs, actions)` to score only the
    taken ones; the loss only ever reads those, so this gives the same gradient
    at a fraction of the cost. Other networks score every action and the taken
    column is picked out.
    """
    only_taken = getattr(net, "action_values", None)
    if only_taken is not None:
        parts = obs if isinstance(obs, tuple) else (obs,)
        return only_taken(*parts, actions)
    return q_values(net, obs).gather(1, actions[:, None]).squeeze(1)


# Acting ---------------------------------------------------------------------------


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise LearningError(f"`mask` must have shape {shape}, but got {mask.shape}")
    empty = ~mask.any(axis=1)
    if empty.any():
        raise LearningError(
            f"`mask` allows no action in row(s) {np.flatnonzero(empty)[:5].tolist()}; "
            "drop those requests (no bid) before asking the agent to act"
        )
    return mask


def _greedy_over_allowed(
    q_values: torch.Tensor | np.ndarray, epsilon: float, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the arguments of an epsilon-greedy policy; return q, allowed, greedy."""
    q = (
        q_values.detach().cpu().numpy()
        if isinstance(q_values, torch.Tensor)
        else np.asarray(q_values)
    )
    if q.ndim != 2:
        raise LearningError(
            f"`q_values` must have shape (batch, n_actions), but got {q.shape}"
        )
    if not 0.0 <= epsilon <= 1.0:
        raise LearningError(f"`epsilon` must be in [0, 1], but got {epsilon}")
    checked = _check_mask(mask, q.shape)
    allowed = np.ones(q.shape, dtype=bool) if checked is None else checked
    greedy = np.where(allowed, q, -np.inf).argmax(axis=1)
    return q, allowed, greedy


def select_action(
    q_values: torch.Tensor | np.ndarray,
    epsilon: float,
    mask: np.ndarray | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """Choose actions epsilon-greedily among the allowed ones.

    With probability `epsilon` a row explores (an allowed action uniformly at
    random); otherwise it takes the allowed action of highest Q-value.

    Args:
        q_values: `(batch, n_actions)` Q-values.
        epsilon: Exploration rate in [0, 1].
        mask: `(batch, n_actions)` bool, True where allowed; None allows all.
        rng: Generator for the exploration draws.

    Returns:
        `(batch,)` int64 action indices, each allowed by `mask`.

    Raises:
        LearningError: If shapes disagree, `epsilon` is out of range or a row
            allows no action.
    """
    q, allowed, greedy = _greedy_over_allowed(q_values, epsilon, mask)
    # A uniform score per allowed action, -1 elsewhere: its argmax is a uniformly
    # random allowed action, drawn for all rows in one call.
    noise = np.where(allowed, rng.random(q.shape), -1.0).argmax(axis=1)
    explore = rng.random(q.shape[0]) < epsilon
    return np.where(explore, noise, greedy).astype(np.int64)


def action_probabilities(
    q_values: torch.Tensor | np.ndarray,
    epsilon: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Return the probability `select_action` gives each action.

    The greedy action gets `1 - epsilon` plus its share of the exploration;
    every allowed action gets `epsilon / n_allowed`; masked actions get 0. This
    is the propensity the reducer logs and off-policy evaluation reads.

    Args:
        q_values: `(batch, n_actions)` Q-values.
        epsilon: Exploration rate in [0, 1].
        mask: `(batch, n_actions)` bool, True where allowed; None allows all.

    Returns:
        `(batch, n_actions)` float64 rows that sum to 1.
    """
    q, allowed, greedy = _greedy_over_allowed(q_values, epsilon, mask)
    probs = allowed * (epsilon / allowed.sum(axis=1, keepdims=True))
    probs[np.arange(q.shape[0]), greedy] += 1.0 - epsilon
    return probs


# Learning -------------------------------------------------------------------------


def double_dqn_targets(
    online: nn.Module,
    target: nn.Module,
    rewards: torch.Tensor,
    next_obs: Observation,
    dones: torch.Tensor,
    gamma: float,
    next_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compute double-DQN targets `r + gamma * (1 - done) * Q_target(s', a*)`.

    The online network picks `a*`, the best allowed next action; the target
    network values it. Decoupling choice from evaluation curbs the overestimation
    of plain DQN. A masked action is never `a*`; a next state that allows no
    action at all is treated as terminal (its value is 0).

    Args:
        online: The network being trained.
        target: The slowly-updated copy.
        rewards: `(batch,)` rewards.
        next_obs: `(batch, ...)` next observations (or a tuple of parts).
        dones: `(batch,)` 1.0 where the episode ended.
        gamma: Discount factor in [0, 1].
        next_mask: `(batch, n_actions)` bool, True where allowed; None allows all.

    Returns:
        `(batch,)` targets, with no gradient.
    """
    with torch.no_grad():
        # Only states that go on need a value; terminal rows (every row, in a
        # bandit) skip both forward passes.
        live = torch.nonzero(dones < 1.0).squeeze(1)
        if live.numel() == 0 or gamma == 0.0:
            return rewards.clone()
        value = torch.zeros_like(rewards)
        obs = (
            tuple(part[live] for part in next_obs)
            if isinstance(next_obs, tuple)
            else next_obs[live]
        )
        chooser = q_values(online, obs)
        mask = None
        if next_mask is not None:
            expected = (rewards.shape[0], chooser.shape[1])
            if tuple(next_mask.shape) != expected:
                raise LearningError(
                    f"`next_mask` must have shape {expected}, but got "
                    f"{tuple(next_mask.shape)}"
                )
            mask = next_mask[live]
            chooser = chooser.masked_fill(~mask, float("-inf"))
        best = chooser.argmax(dim=1, keepdim=True)
        chosen = q_values(target, obs).gather(1, best).squeeze(1)
        if mask is not None:
            chosen = torch.where(mask.any(dim=1), chosen, torch.zeros_like(chosen))
        value[live] = chosen
        return rewards + gamma * value


def dqn_update(
    online: nn.Module,
    target: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    gamma: float,
    max_grad_norm: float,
) -> float:
    """Take one gradient step on the Huber loss between Q(s, a) and its target.

    With `gamma == 0` (one-step episodes) the target is the reward itself and the
    next observation is not needed (nor evaluated).

    Args:
        online: The network being trained.
        target: The target network (unused when `gamma == 0`).
        optimizer: Optimizer over `online`'s parameters.
        batch: Transitions from the replay buffer.
        gamma: Discount factor in [0, 1].
        max_grad_norm: Global gradient norm is clipped to this.

    Returns:
        The loss before the step.
    """
    if gamma == 0.0 or batch.next_obs is None:
        if gamma != 0.0:
            raise LearningError(
                f"`gamma` is {gamma} but the batch has no `next_obs`; store next "
                "observations in the buffer or use gamma=0 for one-step episodes"
            )
        targets = batch.rewards
    else:
        targets = double_dqn_targets(
            online,
            target,
            batch.rewards,
            batch.next_obs,
            batch.dones,
            gamma,
            batch.next_masks,
        )
    taken = taken_q_values(online, batch.obs, batch.actions)
    loss = F.smooth_l1_loss(taken, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(online.parameters(), max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def soft_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Move `target`'s parameters a fraction `tau` towards `online`'s."""
    if not 0.0 < tau <= 1.0:
        raise LearningError(f"`tau` must be in (0, 1], but got {tau}")
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters(), strict=True):
            t.lerp_(o, tau)


def hard_update(target: nn.Module, online: nn.Module) -> None:
    """Copy `online`'s parameters and buffers into `target`."""
    target.load_state_dict(online.state_dict())


# The loop -------------------------------------------------------------------------


class DiscreteEnv(Protocol):
    """What `train_online` needs from an environment (gymnasium's step API).

    `reset` returns `(obs, info)` and `step` returns `(obs, reward, terminated,
    truncated, info)`; `info["action_mask"]`, when present, is the bool mask of
    allowed actions at `obs`.
    """

    n_actions: int

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]: ...


@dataclass(slots=True)
class DQNResult:
    """What `train_online` returns: the trained network and its history."""

    online: nn.Module
    losses: list[float] = field(default_factory=list)
    epsilons: list[float] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    updates: int = 0
    act_seconds: float = 0.0
    """Time spent acting, stepping the environment and storing transitions."""
    learn_seconds: float = 0.0
    """Time spent sampling batches and taking gradient steps."""


def _batched(obs: Any) -> Observation:
    if isinstance(obs, tuple):
        return tuple(torch.as_tensor(np.asarray(p))[None] for p in obs)
    return torch.as_tensor(np.asarray(obs))[None]


def train_online(
    env: DiscreteEnv,
    config: DQNConfig,
    network: Callable[[], nn.Module],
    obs_shape: tuple[int, ...] | Sequence[tuple[int, ...]],
    *,
    progress: bool = False,
) -> DQNResult:
    """Train a double DQN by interacting with `env`.

    Args:
        env: The environment (see `DiscreteEnv`).
        config: Hyper-parameters.
        network: Builds the Q-network (called once; the target is a copy).
        obs_shape: Shape of one observation (or of each part), for the buffer.
        progress: Show a tqdm progress bar.

    Returns:
        The trained online network, per-update losses and epsilons, and the
        return of every finished episode.
    """
    rng = seed_everything(config.seed)
    online = network()
    target = copy.deepcopy(online)
    optimizer = torch.optim.Adam(online.parameters(), lr=config.lr)
    buffer = ReplayBuffer(
        config.buffer_size,
        obs_shape,
        env.n_actions,
        store_next_obs=config.gamma > 0,
        store_masks=True,
    )
    result = DQNResult(online=online)
    all_allowed = np.ones(env.n_actions, dtype=bool)

    obs, info = env.reset(seed=config.seed)
    mask = info.get("action_mask", all_allowed)
    episode_return = 0.0
    for step in tqdm(range(config.total_steps), disable=not progress, desc="dqn"):
        # Act: epsilon-greedy among the allowed actions.
        tick = time.perf_counter()
        epsilon = linear_epsilon(
            config.epsilon_start, config.epsilon_end, config.epsilon_duration, step
        )
        # One state at a time, so this is `select_action` for a batch of one,
        # unrolled: exploring needs no forward pass at all.
        allowed = np.flatnonzero(mask)
        if allowed.size == 0:
            raise LearningError(
                f"the environment allows no action at step {step}; end the "
                "episode instead of offering an empty mask"
            )
        if rng.random() < epsilon:
            action = int(allowed[rng.integers(allowed.size)])
        else:
            with torch.no_grad():
                q = q_values(online, _batched(obs))[0].numpy()
            action = int(allowed[q[allowed].argmax()])

        # Step the environment and remember the transition.
        next_obs, reward, terminated, truncated, info = env.step(action)
        next_mask = info.get("action_mask", all_allowed)
        buffer.add(obs, action, reward, next_obs, terminated, mask, next_mask)
        episode_return += reward
        obs, mask = next_obs, next_mask
        if terminated or truncated:
            result.returns.append(episode_return)
            episode_return = 0.0
            obs, info = env.reset()
            mask = info.get("action_mask", all_allowed)
        tock = time.perf_counter()
        result.act_seconds += tock - tick

        # Learn from a replayed batch.
        if step >= config.learning_starts and step % config.train_frequency == 0:
            batch = buffer.sample(config.batch_size, rng)
            loss = dqn_update(
                online, target, optimizer, batch, config.gamma, config.max_grad_norm
            )
            result.losses.append(loss)
            result.epsilons.append(epsilon)
            result.updates += 1
            result.learn_seconds += time.perf_counter() - tock

        # Sync the target network.
        if step % config.target_update_interval == 0:
            soft_update(target, online, config.tau)
            if result.losses:
                recent = result.returns[-100:]
                logger.debug(
                    LOG_PROGRESS,
                    step,
                    result.losses[-1],
                    epsilon,
                    len(result.returns),
                    float(np.mean(recent)) if recent else 0.0,
                )
    return result
