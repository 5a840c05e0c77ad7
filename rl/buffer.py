"""An array-backed replay buffer for DQN agents.

Every field lives in one preallocated numpy array of `capacity` rows, written as a
ring: once full, the oldest transitions are overwritten first. Sampling gathers a
batch with one fancy index per field and wraps the result in torch tensors without
copying again, which is what keeps the training loop fast.

An observation may have several parts (for example a request's context vector and
its candidates' affinities); pass one shape per part and the batch carries a tuple
of tensors in the same order, which `rl.dqn` hands to the network as `net(*obs)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ad_orchestrator.errors import LearningError

Shape = tuple[int, ...]
Observation = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """A sample of transitions as torch tensors, `batch` rows each.

    Attributes:
        obs: `(batch, *obs_shape)`, or a tuple of such tensors, one per part.
        actions: `(batch,)` int64 indices of the actions taken.
        rewards: `(batch,)` float32 rewards.
        next_obs: Like `obs`, or None when the buffer keeps no next observation
            (one-step episodes).
        dones: `(batch,)` float32, 1.0 where the episode ended after the action.
        masks: `(batch, n_actions)` bool, allowed actions at `obs`, or None.
        next_masks: `(batch, n_actions)` bool, allowed actions at `next_obs`, or
            None (every action allowed).
    """

    obs: Observation
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: Observation | None
    dones: torch.Tensor
    masks: torch.Tensor | None = None
    next_masks: torch.Tensor | None = None


def _shapes(obs_shape: Shape | Sequence[Shape]) -> tuple[Shape, ...]:
    if len(obs_shape) > 0 and all(isinstance(d, int) for d in obs_shape):
        return (tuple(obs_shape),)  # type: ignore[arg-type]
    return tuple(tuple(part) for part in obs_shape)  # type: ignore[arg-type]


class ReplayBuffer:
    """A fixed-capacity ring of transitions in preallocated numpy arrays.

    Args:
        capacity: Most transitions kept; older ones are overwritten.
        obs_shape: Shape of one observation, such as `(8,)`, or a sequence of
            shapes when observations have several parts.
        n_actions: Number of discrete actions (the width of the masks).
        store_next_obs: Keep next observations; turn off for one-step episodes
            (bandits), where the target is the reward alone.
        store_masks: Keep the allowed-action masks of `obs` and `next_obs`.
        obs_dtype: numpy dtype of the observation arrays.

    Raises:
        LearningError: If `capacity` or `n_actions` is not positive.
    """

    def __init__(
        self,
        capacity: int,
        obs_shape: Shape | Sequence[Shape],
        n_actions: int,
        *,
        store_next_obs: bool = True,
        store_masks: bool = False,
        obs_dtype: type[np.floating] = np.float32,
    ) -> None:
        if capacity < 1:
            raise LearningError(f"`capacity` must be at least 1, but got {capacity}")
        if n_actions < 1:
            raise LearningError(f"`n_actions` must be at least 1, but got {n_actions}")
        self.capacity = capacity
        self.n_actions = n_actions
        self.shapes = _shapes(obs_shape)
        self._multi = not (
            len(obs_shape) > 0 and all(isinstance(d, int) for d in obs_shape)
        )
        self.obs = [np.zeros((capacity, *s), dtype=obs_dtype) for s in self.shapes]
        self.next_obs = (
            [np.zeros((capacity, *s), dtype=obs_dtype) for s in self.shapes]
            if store_next_obs
            else None
        )
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.masks = np.ones((capacity, n_actions), dtype=bool) if store_masks else None
        self.next_masks = (
            np.ones((capacity, n_actions), dtype=bool) if store_masks else None
        )
        self._next = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _parts(self, obs: object, name: str, n: int) -> list[np.ndarray]:
        parts = list(obs) if self._multi else [obs]  # type: ignore[call-overload]
        if len(parts) != len(self.shapes):
            raise LearningError(
                f"`{name}` must have {len(self.shapes)} parts, but got {len(parts)}"
            )
        arrays = []
        for part, shape in zip(parts, self.shapes, strict=True):
            array = np.asarray(part)
            if array.shape != (n, *shape):
                raise LearningError(
                    f"`{name}` must have shape {(n, *shape)}, but got {array.shape}; "
                    "use `add` for one transition and `add_batch` for many"
                )
            arrays.append(array)
        return arrays

    def add_batch(
        self,
        obs: object,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: object | None = None,
        dones: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        next_masks: np.ndarray | None = None,
    ) -> None:
        """Append `n` transitions at once, overwriting the oldest when full.

        Args:
            obs: `(n, *obs_shape)` array, or a sequence of arrays, one per part.
            actions: `(n,)` action indices.
            rewards: `(n,)` rewards.
            next_obs: Like `obs`; required when the buffer stores next
                observations.
            dones: `(n,)` episode-ended flags; all True when omitted.
            masks: `(n, n_actions)` allowed actions at `obs`; all allowed when
                omitted.
            next_masks: `(n, n_actions)` allowed actions at `next_obs`.

        Raises:
            LearningError: If a shape does not fit the buffer.
        """
        actions = np.asarray(actions)
        n = actions.shape[0]
        if n > self.capacity:
            raise LearningError(
                f"`actions` holds {n} transitions, more than `capacity` "
                f"{self.capacity}; add them in smaller pieces or grow the buffer"
            )
        if actions.shape != (n,) or np.asarray(rewards).shape != (n,):
            raise LearningError(
                f"`actions` and `rewards` must both have shape ({n},), but got "
                f"{actions.shape} and {np.asarray(rewards).shape}"
            )
        if ((actions < 0) | (actions >= self.n_actions)).any():
            raise LearningError(
                f"`actions` must lie in [0, {self.n_actions}), but got values "
                f"from {actions.min()} to {actions.max()}"
            )
        rows = (self._next + np.arange(n)) % self.capacity
        for store, part in zip(self.obs, self._parts(obs, "obs", n), strict=True):
            store[rows] = part
        if self.next_obs is not None:
            if next_obs is None:
                raise LearningError(
                    "`next_obs` is required: this buffer stores next observations "
                    "(pass `store_next_obs=False` for one-step episodes)"
                )
            parts = self._parts(next_obs, "next_obs", n)
            for next_store, part in zip(self.next_obs, parts, strict=True):
                next_store[rows] = part
        self.actions[rows] = actions
        self.rewards[rows] = rewards
        self.dones[rows] = 1.0 if dones is None else np.asarray(dones, np.float32)
        for mask_store, given, name in (
            (self.masks, masks, "masks"),
            (self.next_masks, next_masks, "next_masks"),
        ):
            if mask_store is None:
                continue
            if given is None:
                mask_store[rows] = True
                continue
            flags = np.asarray(given, dtype=bool)
            if flags.shape != (n, self.n_actions):
                raise LearningError(
                    f"`{name}` must have shape {(n, self.n_actions)}, but got "
                    f"{flags.shape}"
                )
            mask_store[rows] = flags
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)

    def add(
        self,
        obs: object,
        action: int,
        reward: float,
        next_obs: object | None = None,
        done: bool = True,
        mask: np.ndarray | None = None,
        next_mask: np.ndarray | None = None,
    ) -> None:
        """Append one transition; the arguments are `add_batch`'s without the row.

        Written directly into the arrays (no batch of one): acting loops call this
        every step, so it checks only what numpy would not catch itself.
        """
        if not 0 <= action < self.n_actions:
            raise LearningError(
                f"`action` must lie in [0, {self.n_actions}), but got {action}"
            )
        if self.next_obs is not None and next_obs is None:
            raise LearningError(
                "`next_obs` is required: this buffer stores next observations "
                "(pass `store_next_obs=False` for one-step episodes)"
            )
        row = self._next
        for stores, value, name in (
            (self.obs, obs, "obs"),
            (self.next_obs, next_obs, "next_obs"),
        ):
            if stores is None:
                continue
            parts = value if self._multi else (value,)
            for store, part in zip(stores, parts, strict=True):  # type: ignore[call-overload]
                if np.shape(part) != store.shape[1:]:
                    raise LearningError(
                        f"`{name}` must have shape {store.shape[1:]}, but got "
                        f"{np.shape(part)}"
                    )
                store[row] = part
        self.actions[row] = action
        self.rewards[row] = reward
        self.dones[row] = float(done)
        if self.masks is not None and self.next_masks is not None:
            self.masks[row] = True if mask is None else mask
            self.next_masks[row] = True if next_mask is None else next_mask
        self._next = (row + 1) % self.capacity
        self._size = min(self._size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """Draw `batch_size` transitions uniformly, with replacement.

        Args:
            batch_size: Rows in the batch.
            rng: The generator that picks the rows (seeded by the caller).

        Returns:
            The transitions as torch tensors sharing memory with fresh numpy
            copies (never with the buffer itself).

        Raises:
            LearningError: If the buffer is empty or `batch_size` < 1.
        """
        if self._size == 0:
            raise LearningError("cannot sample from an empty buffer; add first")
        if batch_size < 1:
            raise LearningError(f"`batch_size` must be at least 1, got {batch_size}")
        return self.gather(rng.integers(0, self._size, size=batch_size))

    def gather(self, rows: np.ndarray) -> Batch:
        """Return the transitions at buffer `rows` as a batch.

        Joint training samples row indices once and hands the same rows to every
        agent's buffer; while a buffer has not wrapped, row `i` is the `i`-th
        transition added.

        Raises:
            LearningError: If a row is not filled yet.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self._size):
            raise LearningError(
                f"`rows` must lie in [0, {self._size}), the filled part of the "
                f"buffer, but got values from {rows.min()} to {rows.max()}"
            )

        def parts(stores: list[np.ndarray]) -> Observation:
            tensors = tuple(torch.from_numpy(store[rows]) for store in stores)
            return tensors if self._multi else tensors[0]

        return Batch(
            obs=parts(self.obs),
            actions=torch.from_numpy(self.actions[rows]),
            rewards=torch.from_numpy(self.rewards[rows]),
            next_obs=None if self.next_obs is None else parts(self.next_obs),
            dones=torch.from_numpy(self.dones[rows]),
            masks=None if self.masks is None else torch.from_numpy(self.masks[rows]),
            next_masks=(
                None
                if self.next_masks is None
                else torch.from_numpy(self.next_masks[rows])
            ),
        )
