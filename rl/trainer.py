"""Joint training, per-agent execution: one trainer, one network per learned agent.

The trainer reads the whole decision record (every agent's inputs, the Policy's
masks, the served actions and the one shared reward) and trains each learned
agent's network from it. At serving time each agent runs its network on its own
inputs only, so what the trainer hands each learner is exactly that agent's slice
of the record.

- Joint (default): each step samples one set of decision rows and every learner
  updates on those same rows, so the agents learn from the same decisions and
  the same reward.
- Independent (`independent=True`, the ablation): each learner draws its own
  batches from its own stream with its own generator, one agent after another,
  as if trained by separate jobs.

Checkpoint selection: the last `validation_fraction` of the training rows (the
latest ones, never the test rows) is held back as a validation slice. Every
`eval_every` steps the served policy (epsilon-greedy over the Q-values, ties
sharing the greedy mass, exactly as the reducer serves) is compared with the
logging policy on that slice by a paired bootstrap of (estimator terms - logged
click); the checkpoint with the highest lower bound is kept, and training stops
once `patience` evaluations pass without a better one. A "no preference" model
(constant Q: every ad ties, so the reducer serves them uniformly) competes too,
so a network that learned nothing trustworthy is never preferred to it.

Learners join through `register_learner(name, factory)`. The Content agent's is
built in: Q(context, ad) fitted to logged clicks as one-step episodes (the target
is the click; `gamma` is 0 whatever the config says). Budget's pacing learner
registers itself the same way and reads its inputs from `record.inputs["budget"]`.

Run a training from Python:

    from rl.trainer import TrainConfig, train
    result = train(TrainConfig(campaign="all", steps=1500))
    result.report["ope"]["policy"]["snipw"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ad_orchestrator.errors import LearningError
from rl.buffer import ReplayBuffer
from rl.dqn import (
    dqn_update,
    linear_epsilon,
    seed_everything,
)
from rl.envs.obd import BanditLog, load_obd, train_test_split
from rl.networks import ContentQNet
from rl.ope import (
    Interval,
    RewardModel,
    estimate_interval,
    estimate_policy_value,
    paired_bootstrap_against_logged,
)
from rl.ope_validation import fit_reward_model, predict_rewards

logger = logging.getLogger(__name__)

LOG_STEP = "train step=%d agent=%s loss=%.6f epsilon=%.3f"
LOG_OPE = "train step=%d agent=%s ope_snipw=%.5f ope_ipw=%.5f"
REPORTED = ("ipw", "snipw", "dr")


# Configuration ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What to train on and how; checked when built."""

    campaign: str = "all"
    """OBD campaign: all, men or women."""
    policy: str = "random"
    """OBD logging policy whose log is the training data."""
    train_fraction: float = 0.7
    """Earliest fraction of the log used for training; the rest is the test set."""
    steps: int = 1500
    """Gradient steps per learner."""
    batch_size: int = 128
    """Decisions per step."""
    lr: float = 1e-3
    """Adam learning rate."""
    gamma: float = 0.0
    """Discount of sequential learners (Content's episodes are one step)."""
    max_grad_norm: float = 10.0
    """Global gradient norm limit."""
    hidden: int = 64
    """Hidden width of the networks."""
    epsilon_start: float = 0.5
    """Exploration rate of the served policy at step 0."""
    epsilon_end: float = 0.05
    """Exploration rate once the schedule ends (what the trained model serves)."""
    epsilon_fraction: float = 0.5
    """Fraction of the steps over which epsilon falls."""
    eval_every: int = 100
    """Steps between checkpoint evaluations (validation selection and the test
    curve); 0 turns them off and keeps the last model."""
    validation_fraction: float = 0.2
    """Latest fraction of the training rows held back to select the checkpoint
    (0 keeps the last model; the test rows are never used)."""
    patience: int = 4
    """Evaluations without a better validation bound before training stops."""
    select_estimator: str = "snipw"
    """Estimator of the validation selection: ipw, snipw or dr."""
    select_bootstrap: int = 200
    """Bootstrap resamples of each validation comparison."""
    weight_decay: float = 1e-2
    """Decoupled weight decay (AdamW) of the Content network."""
    n_bootstrap: int = 500
    """Bootstrap resamples of the final OPE intervals."""
    seed: int = 0
    """Seed of every generator."""
    independent: bool = False
    """Ablation: train each agent on its own stream instead of jointly."""
    agents: tuple[str, ...] = ("content",)
    """Learned agents to train; each must be registered."""
    torch_threads: int = 1
    """Torch CPU threads (0 keeps torch's default). Small networks on a shared
    machine train fastest on one thread: more threads mostly wait for each other."""

    def __post_init__(self) -> None:
        checks = [
            ("train_fraction", 0.0 < self.train_fraction < 1.0, "in (0, 1)"),
            ("steps", self.steps >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("lr", self.lr > 0, "positive"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("max_grad_norm", self.max_grad_norm > 0, "positive"),
            ("hidden", self.hidden >= 1, "at least 1"),
            ("epsilon_start", 0.0 <= self.epsilon_start <= 1.0, "in [0, 1]"),
            ("epsilon_end", 0.0 <= self.epsilon_end <= 1.0, "in [0, 1]"),
            ("epsilon_fraction", 0.0 < self.epsilon_fraction <= 1.0, "in (0, 1]"),
            ("eval_every", self.eval_every >= 0, "non-negative"),
            (
                "validation_fraction",
                0.0 <= self.validation_fraction < 1.0,
                "in [0, 1)",
            ),
            ("patience", self.patience >= 1, "at least 1"),
            ("select_estimator", self.select_estimator in REPORTED, f"in {REPORTED}"),
            ("select_bootstrap", self.select_bootstrap >= 1, "at least 1"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("n_bootstrap", self.n_bootstrap >= 1, "at least 1"),
            ("torch_threads", self.torch_threads >= 0, "non-negative"),
            ("agents", len(self.agents) > 0, "a non-empty tuple of agent names"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise LearningError(
                    f"TrainConfig `{name}` must be {expected}, but got "
                    f"{getattr(self, name)!r}"
                )

    def epsilon(self, step: int) -> float:
        """Exploration rate of the served policy after `step` steps."""
        duration = max(1, int(self.steps * self.epsilon_fraction))
        return linear_epsilon(self.epsilon_start, self.epsilon_end, duration, step)


# The decision record ----------------------------------------------------------------


@dataclass(frozen=True)
class DecisionRecord:
    """Every agent's inputs and the shared reward, one row per logged decision.

    Attributes:
        reward: `(n,)` the shared reward (a click).
        actions: `(n,)` index of the served ad among `items`.
        pscore: `(n,)` probability the logging policy gave the served ad.
        items: `(n_ads, AD_DIM)` encodings of the candidate ads (affinity 0).
        inputs: Per agent, its named row-aligned input arrays: `context` has
            `context` `(n, CONTEXT_DIM)`; `content` has `affinity` `(n, n_ads)`;
            other agents add their own (Budget: its pacing state).
        masks: `(n, n_ads)` bool, the ads Policy allowed; None allows all.
    """

    reward: np.ndarray
    actions: np.ndarray
    pscore: np.ndarray
    items: np.ndarray
    inputs: Mapping[str, Mapping[str, np.ndarray]]
    masks: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Number of decisions."""
        return int(self.reward.shape[0])

    @classmethod
    def from_bandit_log(
        cls, log: BanditLog, masks: np.ndarray | None = None
    ) -> DecisionRecord:
        """Build the record of a logged bandit dataset (OBD)."""
        if masks is not None and masks.shape != (log.n_rounds, log.n_actions):
            raise LearningError(
                f"`masks` must have shape {(log.n_rounds, log.n_actions)}, but got "
                f"{masks.shape}"
            )
        return cls(
            reward=log.rewards,
            actions=log.actions,
            pscore=log.pscore,
            items=log.item_encodings,
            inputs={
                "context": {"context": log.contexts},
                "content": {"affinity": log.affinity},
            },
            masks=masks,
        )


# Learners ---------------------------------------------------------------------------


class Learner(Protocol):
    """One learned agent's side of the trainer.

    `update(rows, rng)` takes one gradient step: on the record's `rows` when
    training jointly, or on a batch the learner samples itself with `rng` when
    `rows` is None (independent). It returns the loss.
    """

    @property
    def name(self) -> str:
        """The agent's name."""

    @property
    def model(self) -> nn.Module:
        """The network the agent serves with."""

    def update(self, rows: np.ndarray | None, rng: np.random.Generator) -> float: ...


LearnerFactory = Callable[[TrainConfig, DecisionRecord], Learner]
_LEARNERS: dict[str, LearnerFactory] = {}


def register_learner(
    name: str, factory: LearnerFactory, *, replace: bool = False
) -> None:
    """Make a learned agent trainable by name (`TrainConfig.agents`).

    Args:
        name: The agent's name (`content`, `budget`, ...).
        factory: Builds the learner from the config and the training record.
        replace: Allow replacing an already registered learner.

    Raises:
        LearningError: If `name` is taken and `replace` is False.
    """
    if name in _LEARNERS and not replace:
        raise LearningError(
            f"a learner named {name!r} is already registered; pass replace=True "
            "to swap it"
        )
    _LEARNERS[name] = factory


def unregister_learner(name: str) -> None:
    """Remove a registered learner (tests and plug-ins that clean up after them).

    Raises:
        LearningError: If no learner has that name.
    """
    if name not in _LEARNERS:
        raise LearningError(
            f"no learner named {name!r} is registered; registered: "
            f"{registered_learners()}"
        )
    del _LEARNERS[name]


def registered_learners() -> tuple[str, ...]:
    """Return the names of the registered learners."""
    return tuple(_LEARNERS)


class ItemScorer(nn.Module):
    """Training view of `ContentQNet`: Q over a fixed item table.

    Maps `(context (batch, CONTEXT_DIM), affinity (batch, n_items))` to
    `(batch, n_items)` by filling each item's affinity column and calling the
    wrapped `ContentQNet`, so the replay buffer stores an affinity row instead
    of the whole `(n_items, AD_DIM)` ad table per decision. Its parameters are
    the `ContentQNet`'s.
    """

    items: torch.Tensor

    def __init__(self, net: ContentQNet, items: np.ndarray) -> None:
        super().__init__()
        self.net = net
        self.register_buffer(
            "items", torch.as_tensor(items[:, :-1], dtype=torch.float32)
        )

    def forward(self, context: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
        """Score every item for every context: `(batch, n_items)`."""
        items = self.items.expand(affinity.shape[0], -1, -1)
        ads = torch.cat([items, affinity.unsqueeze(-1)], dim=-1)
        return self.net(context, ads)

    def action_values(
        self, context: torch.Tensor, affinity: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """Score only the taken item of each row: `(batch,)` (see `taken_q_values`)."""
        ads = torch.cat(
            [self.items[actions], affinity.gather(1, actions[:, None])], dim=-1
        )
        return self.net(context, ads.unsqueeze(1)).squeeze(1)


class ContentLearner:
    """Q(context, ad) from logged clicks: one-step episodes, target = click.

    Every decision of the record is one transition (context and affinities, the
    served ad, the click) in an array replay buffer, with Policy's mask; updates
    are `rl.dqn.dqn_update` with `gamma = 0`.
    """

    name = "content"

    def __init__(self, config: TrainConfig, record: DecisionRecord) -> None:
        self.config = config
        self.model = ContentQNet(hidden=config.hidden)
        self.scorer = ItemScorer(self.model, record.items)
        contexts = record.inputs["context"]["context"]
        affinity = record.inputs["content"]["affinity"]
        self.buffer = ReplayBuffer(
            record.n,
            [contexts.shape[1:], affinity.shape[1:]],
            record.items.shape[0],
            store_next_obs=False,
            store_masks=True,
        )
        self.buffer.add_batch(
            (contexts, affinity), record.actions, record.reward, masks=record.masks
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    @classmethod
    def build(cls, config: TrainConfig, record: DecisionRecord) -> ContentLearner:
        """The registered factory."""
        return cls(config, record)

    def update(self, rows: np.ndarray | None, rng: np.random.Generator) -> float:
        """Take one Huber-loss step on logged clicks."""
        batch = (
            self.buffer.sample(self.config.batch_size, rng)
            if rows is None
            else self.buffer.gather(rows)
        )
        return dqn_update(
            self.scorer,
            self.scorer,
            self.optimizer,
            batch,
            gamma=0.0,
            max_grad_norm=self.config.max_grad_norm,
        )


register_learner("content", ContentLearner.build)


# The served policy and its evaluation -----------------------------------------------


def content_q_values(
    model: ContentQNet, log: BanditLog, *, chunk: int = 2048
) -> np.ndarray:
    """Return `(n, n_actions, len_list)` Q-values of every item at every position."""
    scorer = ItemScorer(model, log.item_encodings)
    out = np.empty((log.n_rounds, log.n_actions, log.len_list), dtype=np.float32)
    affinity = torch.from_numpy(log.affinity)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for k in range(log.len_list):
            contexts = torch.from_numpy(log.contexts_at(k + 1))
            for start in range(0, log.n_rounds, chunk):
                part = slice(start, start + chunk)
                out[part, :, k] = scorer(contexts[part], affinity[part]).numpy()
    model.train(was_training)
    return out


def served_probabilities(
    q_values: np.ndarray, epsilon: float, masks: np.ndarray | None = None
) -> np.ndarray:
    """Return the reducer's epsilon-greedy probabilities for `(n, n_actions)` Q.

    Every allowed ad gets `epsilon / n_allowed`; the `1 - epsilon` greedy mass is
    shared evenly by the allowed ads tied at the top (`reducer.epsilon_greedy`),
    so a model whose Q-values all tie serves the allowed ads uniformly.
    """
    q = np.asarray(q_values, dtype=np.float64)
    allowed = np.ones(q.shape, dtype=bool) if masks is None else np.asarray(masks)
    if allowed.shape != q.shape or not allowed.any(axis=1).all():
        raise LearningError(
            f"`masks` must be a bool array shaped like the Q-values {q.shape} with "
            "at least one allowed ad per row"
        )
    scores = np.where(allowed, q, -np.inf)
    best = allowed & (scores == scores.max(axis=1, keepdims=True))
    n_allowed = allowed.sum(axis=1, keepdims=True)
    return allowed * (epsilon / n_allowed) + best * (
        (1.0 - epsilon) / best.sum(axis=1, keepdims=True)
    )


def policy_action_dist(
    model: ContentQNet,
    log: BanditLog,
    epsilon: float,
    masks: np.ndarray | None = None,
) -> np.ndarray:
    """Return the served policy's `(n, n_actions, len_list)` action distribution.

    At each row and position the policy is what the reducer serves: epsilon-greedy
    over the allowed ads, `1 - epsilon` shared by the best ones (ties split it),
    `epsilon` spread evenly over all allowed (`served_probabilities`). This is
    the layout `rl.ope` reads (row `i` is judged at its logged position).

    Args:
        model: The Content network.
        log: Rows to act on.
        epsilon: Exploration rate in [0, 1].
        masks: `(n, n_actions)` bool allowed ads; None allows all.
    """
    q = content_q_values(model, log)
    dist = np.empty(q.shape, dtype=np.float64)
    for k in range(log.len_list):
        dist[:, :, k] = served_probabilities(q[:, :, k], epsilon, masks)
    return dist


def uniform_action_dist(log: BanditLog, masks: np.ndarray | None = None) -> np.ndarray:
    """Return the uniform random policy's `(n, n_actions, len_list)` distribution."""
    allowed = np.ones((log.n_rounds, log.n_actions)) if masks is None else masks
    per_row = allowed / allowed.sum(axis=1, keepdims=True)
    return np.repeat(per_row[:, :, None], log.len_list, axis=2)


def evaluate(
    model: ContentQNet,
    test_log: BanditLog,
    *,
    epsilon: float = 0.05,
    reward_model: RewardModel | None = None,
    masks: np.ndarray | None = None,
    n_bootstrap: int = 500,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Estimate the served policy's CTR on a held-out log, with intervals.

    Args:
        model: The Content network.
        test_log: Held-out log (later than the training data).
        epsilon: Exploration rate the policy serves with.
        reward_model: Click model for DR; fitted on `test_log` when None (pass
            one fitted on the training split to keep the test set unseen).
        masks: `(n, n_actions)` allowed ads; None allows all.
        n_bootstrap: Bootstrap resamples.
        alpha: One minus the confidence level.
        seed: Seed of the resampling.

    Returns:
        `policy` (IPW/SNIPW/DR intervals as dicts), `logging_ctr` (the logging
        policy's observed CTR on the same rows, with its bootstrap interval),
        `epsilon` and `n_rounds`.
    """
    model_ = reward_model or fit_reward_model(test_log)
    dist = policy_action_dist(model, test_log, epsilon, masks)
    common: dict[str, Any] = {
        "reward": test_log.rewards,
        "action": test_log.actions,
        "pscore": test_log.pscore,
        "position": test_log.position_index,
        "estimated_rewards": predict_rewards(model_, test_log),
        "n_bootstrap": n_bootstrap,
        "alpha": alpha,
        "seed": seed,
    }
    policy = {
        name: estimate_interval(name, action_dist=dist, **common).to_dict()
        for name in REPORTED
    }
    # The logging policy's own CTR: on-policy, so every row counts with weight 1.
    logging_ctr = estimate_interval(
        "ipw",
        reward=test_log.rewards,
        action=np.zeros(test_log.n_rounds, dtype=np.int64),
        pscore=np.ones(test_log.n_rounds),
        action_dist=np.ones((test_log.n_rounds, 1)),
        n_bootstrap=n_bootstrap,
        alpha=alpha,
        seed=seed,
    ).to_dict()
    return {
        "policy": policy,
        "logging_ctr": logging_ctr,
        "epsilon": epsilon,
        "n_rounds": test_log.n_rounds,
    }


# Checkpoint selection on the validation slice -------------------------------------

NO_PREFERENCE = "no-preference"


def no_preference_model(hidden: int, value: float = 0.0) -> ContentQNet:
    """Return a `ContentQNet` that scores every ad `value` exactly.

    Its last layer's weights are zero, so every candidate ties and the reducer
    serves the allowed ads uniformly: the policy to keep when nothing learned
    can be trusted to do better.
    """
    model = ContentQNet(hidden=hidden)
    last = model.head[-1]
    if not isinstance(last, nn.Linear):
        raise LearningError(
            f"ContentQNet's head must end in a Linear layer, but got {last!r}"
        )
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)
    return model


@dataclass(frozen=True)
class Checkpoint:
    """One candidate model judged on the validation slice.

    Attributes:
        label: `no-preference`, or `step N`.
        step: Gradient steps taken (-1 for the no-preference model).
        estimate: Candidate minus logging policy, point estimate.
        low: Lower end of its paired bootstrap interval.
        high: Upper end of that interval.
    """

    label: str
    step: int
    estimate: float
    low: float
    high: float


def select_checkpoint(checkpoints: list[Checkpoint]) -> int:
    """Return the index of the checkpoint to keep.

    The highest lower bound of (checkpoint - logging policy) wins: the one the
    data show to be least likely worse than logging. Ties keep the earliest, so
    the no-preference model (listed first) and shorter training win ties.

    Raises:
        LearningError: If `checkpoints` is empty.
    """
    if not checkpoints:
        raise LearningError("select_checkpoint needs at least one checkpoint")
    best = 0
    for index, point in enumerate(checkpoints):
        if point.low > checkpoints[best].low:
            best = index
    return best


def validation_interval(
    model: ContentQNet,
    log: BanditLog,
    *,
    epsilon: float,
    estimator: str,
    masks: np.ndarray | None = None,
    reward_model: RewardModel | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> Interval:
    """Paired bootstrap of the served policy minus the logging policy on `log`."""
    dist = policy_action_dist(model, log, epsilon, masks)
    estimated = predict_rewards(reward_model, log) if reward_model is not None else None
    return paired_bootstrap_against_logged(
        dist,
        reward=log.rewards,
        action=log.actions,
        pscore=log.pscore,
        position=log.position_index,
        estimated_rewards=estimated,
        estimator=estimator,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )


# Training ---------------------------------------------------------------------------


@dataclass
class History:
    """What happened during training, for logs, plots and reports.

    Attributes:
        step: `(updates,)` step of each update, per agent.
        loss: Per agent, the loss of each update.
        epsilon: Per agent, the served exploration rate at each update.
        ope_step: Steps at which the policy was evaluated.
        ope: Per estimator (`ipw`, `snipw`), the Content policy's estimated CTR
            on the test split at each `ope_step` (reported, never used to choose).
        validation: Every checkpoint judged on the validation slice
            (`Checkpoint` fields), in order.
    """

    step: dict[str, list[int]] = field(default_factory=dict)
    loss: dict[str, list[float]] = field(default_factory=dict)
    epsilon: dict[str, list[float]] = field(default_factory=dict)
    ope_step: list[int] = field(default_factory=list)
    ope: dict[str, list[float]] = field(
        default_factory=lambda: {"ipw": [], "snipw": []}
    )
    validation: list[dict[str, Any]] = field(default_factory=list)

    def record(self, agent: str, step: int, loss: float, epsilon: float) -> None:
        """Append one update of `agent`."""
        self.step.setdefault(agent, []).append(step)
        self.loss.setdefault(agent, []).append(loss)
        self.epsilon.setdefault(agent, []).append(epsilon)

    def to_dict(self) -> dict[str, Any]:
        """Return the history as JSON-ready data."""
        return asdict(self)


@dataclass
class TrainResult:
    """The outcome of `train`.

    Attributes:
        config: The settings used.
        models: Per agent, its trained network (`content`: `ContentQNet`).
        history: Losses, epsilons and periodic OPE estimates.
        report: JSON-ready summary: data, timing, final OPE of the Content
            policy with intervals, and the logging policy's CTR.
    """

    config: TrainConfig
    models: dict[str, nn.Module]
    history: History
    report: dict[str, Any]


def _quick_ope(
    model: ContentQNet, log: BanditLog, epsilon: float, masks: np.ndarray | None
) -> dict[str, float]:
    dist = policy_action_dist(model, log, epsilon, masks)
    return {
        name: estimate_policy_value(
            name,
            reward=log.rewards,
            action=log.actions,
            pscore=log.pscore,
            action_dist=dist,
            position=log.position_index,
        )
        for name in ("ipw", "snipw")
    }


def _validation_split(
    log: BanditLog, masks: np.ndarray | None, fraction: float
) -> tuple[BanditLog, BanditLog | None, np.ndarray | None, np.ndarray | None]:
    """Split off the latest `fraction` of `log` as the validation slice."""
    if fraction == 0.0:
        return log, None, masks, None
    fit_log, val_log = train_test_split(log, 1.0 - fraction)
    cut = fit_log.n_rounds
    if masks is None:
        return fit_log, val_log, None, None
    return fit_log, val_log, masks[:cut], masks[cut:]


class _Selector:
    """Judges checkpoints on the validation slice and keeps the best one."""

    def __init__(
        self,
        config: TrainConfig,
        fit_log: BanditLog,
        val_log: BanditLog | None,
        val_masks: np.ndarray | None,
        history: History,
    ) -> None:
        self.config = config
        self.val_log = val_log
        self.val_masks = val_masks
        self.history = history
        self.enabled = val_log is not None and config.eval_every > 0
        self.fit_ctr = float(fit_log.rewards.mean())
        self.reward_model = (
            fit_reward_model(fit_log)
            if self.enabled and config.select_estimator == "dr"
            else None
        )
        self.checkpoints: list[Checkpoint] = []
        self.states: list[dict[str, torch.Tensor] | None] = []
        self.best_trained = -np.inf
        self.stale = 0

    def _judge(self, model: ContentQNet, label: str, step: int) -> Checkpoint:
        assert self.val_log is not None
        interval = validation_interval(
            model,
            self.val_log,
            epsilon=self.config.epsilon_end,
            estimator=self.config.select_estimator,
            masks=self.val_masks,
            reward_model=self.reward_model,
            n_bootstrap=self.config.select_bootstrap,
            seed=self.config.seed,
        )
        point = Checkpoint(label, step, interval.estimate, interval.low, interval.high)
        self.checkpoints.append(point)
        self.history.validation.append(asdict(point))
        logger.info(
            "validation %s: %s - logged %+.5f [%+.5f, %+.5f]",
            label,
            self.config.select_estimator,
            point.estimate,
            point.low,
            point.high,
        )
        return point

    def consider_no_preference(self) -> None:
        """Judge the constant-Q model (the reducer serves it uniformly)."""
        if not self.enabled:
            return
        model = no_preference_model(self.config.hidden, self.fit_ctr)
        self._judge(model, NO_PREFERENCE, -1)
        self.states.append(_snapshot(model))

    def consider(self, model: ContentQNet, step: int) -> bool:
        """Judge the model after `step` steps; True when training should stop."""
        if not self.enabled:
            return False
        point = self._judge(model, f"step {step}", step)
        self.states.append(_snapshot(model))
        if point.low > self.best_trained:
            self.best_trained = point.low
            self.stale = 0
            return False
        self.stale += 1
        return self.stale >= self.config.patience

    @property
    def chosen(self) -> int:
        """Index of the selected checkpoint."""
        return select_checkpoint(self.checkpoints)

    def restore(self, model: ContentQNet) -> None:
        """Load the selected checkpoint's weights into `model`."""
        state = self.states[self.chosen]
        assert state is not None
        model.load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        """The selection, JSON-ready, for reports and metadata."""
        chosen = self.checkpoints[self.chosen]
        assert self.val_log is not None
        if chosen.label == NO_PREFERENCE:
            reason = (
                "no trained checkpoint had a higher lower bound than the "
                "no-preference model, which serves the allowed ads uniformly"
            )
        else:
            reason = "the trained checkpoint with the highest lower bound"
        return {
            "chosen": chosen.label,
            "step": chosen.step,
            "estimator": self.config.select_estimator,
            "estimate": chosen.estimate,
            "low": chosen.low,
            "high": chosen.high,
            "n_validation": self.val_log.n_rounds,
            "validation_ctr": float(self.val_log.rewards.mean()),
            "epsilon": self.config.epsilon_end,
            "reason": reason,
            "curve": [asdict(point) for point in self.checkpoints],
        }


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(
    config: TrainConfig,
    log: BanditLog | None = None,
    progress: bool = True,
    masks: np.ndarray | None = None,
) -> TrainResult:
    """Train every agent of `config.agents` on a logged dataset.

    Args:
        config: What to train and how.
        log: The logged data; `load_obd(config.policy, config.campaign)` when
            None.
        progress: Show a tqdm progress bar.
        masks: `(n, n_actions)` Policy's allowed ads for every row of `log`;
            None allows all.

    Returns:
        The trained networks, their history and a report.
    """
    started = time.perf_counter()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    rng = seed_everything(config.seed)

    # Data: a time-ordered split; the test part is only ever used for OPE. The
    # latest rows of the training part are the validation slice.
    log = log or load_obd(config.policy, config.campaign)
    train_log, test_log = train_test_split(log, config.train_fraction)
    cut = train_log.n_rounds
    train_masks = None if masks is None else masks[:cut]
    test_masks = None if masks is None else masks[cut:]
    fit_log, val_log, fit_masks, val_masks = _validation_split(
        train_log, train_masks, config.validation_fraction
    )
    record = DecisionRecord.from_bandit_log(fit_log, fit_masks)

    # Learners: one per learned agent, each with its own network and buffer.
    unknown = [name for name in config.agents if name not in _LEARNERS]
    if unknown:
        raise LearningError(
            f"TrainConfig `agents` names unregistered learners {unknown}; "
            f"registered: {registered_learners()} (see `register_learner`)"
        )
    learners = {name: _LEARNERS[name](config, record) for name in config.agents}
    history = History()
    selector = _Selector(config, fit_log, val_log, val_masks, history)
    selector.consider_no_preference()

    def evaluate_now(step: int) -> bool:
        """Judge the Content checkpoint; return True when training should stop."""
        content = learners.get("content")
        if config.eval_every == 0 or content is None:
            return False
        if not isinstance(content.model, ContentQNet):
            return False
        estimates = _quick_ope(content.model, test_log, config.epsilon_end, test_masks)
        history.ope_step.append(step)
        for name, value in estimates.items():
            history.ope[name].append(value)
        logger.info(LOG_OPE, step, "content", estimates["snipw"], estimates["ipw"])
        return selector.consider(content.model, step)

    def learn(
        name: str, step: int, rows: np.ndarray | None, own: np.random.Generator
    ) -> None:
        loss = learners[name].update(rows, own)
        epsilon = config.epsilon(step)
        history.record(name, step, loss, epsilon)
        if step % max(1, config.steps // 10) == 0:
            logger.info(LOG_STEP, step, name, loss, epsilon)

    def due(step: int) -> bool:
        return bool(config.eval_every) and step % config.eval_every == 0

    # The loop: joint steps share their rows; independent learners run apart.
    total = config.steps * (len(learners) if config.independent else 1)
    bar = tqdm(total=total, disable=not progress, desc="train", unit="step")
    stopped_at: int | None = None
    if config.independent:
        for index, name in enumerate(learners):
            own = np.random.default_rng([config.seed, index])
            for step in range(config.steps):
                if name == "content" and due(step) and evaluate_now(step):
                    stopped_at = step
                    break
                learn(name, step, None, own)
                bar.update()
    else:
        for step in range(config.steps):
            if due(step) and evaluate_now(step):
                stopped_at = step
                break
            rows = rng.integers(0, record.n, size=config.batch_size)
            for name in learners:
                learn(name, step, rows, rng)
            bar.update()
    bar.close()
    if stopped_at is None:
        evaluate_now(config.steps)
    else:
        logger.info(
            "early stop at step %d: %d evaluations without a better validation bound",
            stopped_at,
            config.patience,
        )

    # Keep the selected Content checkpoint.
    if "content" in learners and selector.enabled:
        selector.restore(learners["content"].model)  # type: ignore[arg-type]

    # Final evaluation of the Content policy, with intervals.
    models = {name: learner.model for name, learner in learners.items()}
    report: dict[str, Any] = {
        "config": asdict(config),
        "data": {
            "policy": log.policy,
            "campaign": log.campaign,
            "n_train": train_log.n_rounds,
            "n_test": test_log.n_rounds,
            "train_ctr": float(train_log.rewards.mean()),
            "test_ctr": float(test_log.rewards.mean()),
        },
        "mode": "independent" if config.independent else "joint",
        "stopped_at": stopped_at,
    }
    if selector.enabled:
        report["selection"] = selector.summary()
    if "content" in models:
        report["ope"] = evaluate(
            models["content"],  # type: ignore[arg-type]
            test_log,
            epsilon=config.epsilon_end,
            reward_model=fit_reward_model(train_log),
            masks=test_masks,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
        )
    report["duration_s"] = time.perf_counter() - started
    logger.info("trained %s in %.1fs", list(models), report["duration_s"])
    return TrainResult(config=config, models=models, history=history, report=report)
