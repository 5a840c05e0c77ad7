"""DQN training throughput: our loop next to a plain single-file DQN loop.

Both loops train the Content agent's network (`ContentQNet` behind
`rl.trainer.ItemScorer`, 80 candidate ads) on the same environment, the Open
Bandit Dataset replayed by `BanditReplayEnv`, with the same batch size, learning
rate, schedule, discount and seed, on one torch thread. Ours is
`rl.dqn.train_online` (array replay buffer, masked epsilon-greedy with no forward
pass when exploring, double-DQN targets computed only for next states that are not
terminal, only the taken ads scored in the loss). The reference is the
loop a single-file DQN script writes (CleanRL-style): transitions as tuples in a
deque, `random.sample`, `np.stack` per batch, a plain max target and a full
forward pass over every action before picking the taken one. It is written here
for the benchmark and is not used anywhere else.

Where the gain comes from: acting differs only in bookkeeping; learning is faster
because every replayed transition of a bandit is terminal (ours evaluates no next
state, the reference evaluates the target network and multiplies by zero) and
because ours scores 1 ad per transition in the loss where the reference scores all
80 and keeps one. Both give the same loss and gradients for this environment (the
reference's target is plain DQN's max, ours double DQN's, equal here since
terminal values are zero).

Both loops time their acting phase (choose, step, store) and their learning
phase (sample, update) separately, so the figures are env steps per second of
acting and gradient updates per second of learning. Runs alternate (ours,
reference, ours, ...) and the median of `--repeats` runs is printed, with the
ratio ours / reference.

Run: `.venv/bin/python benchmarks/dqn_throughput.py [--steps 1500] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812 (the conventional alias)

from rl.dqn import DQNConfig, train_online
from rl.envs.obd import BanditReplayEnv, load_obd
from rl.networks import ContentQNet
from rl.trainer import ItemScorer


@dataclass(frozen=True)
class Throughput:
    """One run's figures."""

    env_steps_per_s: float
    updates_per_s: float


def reference_dqn(env: BanditReplayEnv, config: DQNConfig) -> Throughput:
    """A plain single-file DQN loop, the way a standalone script writes it."""
    random.seed(config.seed)
    np.random.seed(config.seed)  # noqa: NPY002 (the reference uses the global one)
    torch.manual_seed(config.seed)
    q_network = ItemScorer(ContentQNet(config.hidden), env.item_encodings)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=config.lr)
    memory: collections.deque = collections.deque(maxlen=config.buffer_size)
    act_time = learn_time = 0.0
    updates = 0

    obs, _ = env.reset(seed=config.seed)
    for step in range(config.total_steps):
        start = time.perf_counter()
        slope = (config.epsilon_end - config.epsilon_start) / config.epsilon_duration
        epsilon = max(slope * step + config.epsilon_start, config.epsilon_end)
        if random.random() < epsilon:
            action = random.randrange(env.n_actions)
        else:
            with torch.no_grad():
                parts = [torch.as_tensor(p).unsqueeze(0) for p in obs]
                action = int(q_network(*parts).argmax(dim=1).item())
        next_obs, reward, terminated, truncated, _ = env.step(action)
        memory.append((obs, action, reward, next_obs, terminated))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        middle = time.perf_counter()
        act_time += middle - start

        if step >= config.learning_starts and step % config.train_frequency == 0:
            batch = random.sample(memory, config.batch_size)
            contexts = torch.as_tensor(np.stack([t[0][0] for t in batch]))
            affinity = torch.as_tensor(np.stack([t[0][1] for t in batch]))
            actions = torch.as_tensor([t[1] for t in batch])
            rewards = torch.as_tensor([t[2] for t in batch], dtype=torch.float32)
            next_contexts = torch.as_tensor(np.stack([t[3][0] for t in batch]))
            next_affinity = torch.as_tensor(np.stack([t[3][1] for t in batch]))
            dones = torch.as_tensor([t[4] for t in batch], dtype=torch.float32)
            with torch.no_grad():
                target_max = target_network(next_contexts, next_affinity).max(dim=1)[0]
                td_target = rewards + config.gamma * target_max * (1 - dones)
            old_value = q_network(contexts, affinity).gather(1, actions[:, None])
            loss = F.smooth_l1_loss(old_value.squeeze(1), td_target)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(q_network.parameters(), config.max_grad_norm)
            optimizer.step()
            updates += 1
            learn_time += time.perf_counter() - middle

        if step % config.target_update_interval == 0:
            target_network.load_state_dict(q_network.state_dict())
    return Throughput(config.total_steps / act_time, updates / learn_time)


def ours(env: BanditReplayEnv, config: DQNConfig) -> Throughput:
    """Our loop, `rl.dqn.train_online`, on the same network and environment."""
    result = train_online(
        env,
        config,
        lambda: ItemScorer(ContentQNet(config.hidden), env.item_encodings),
        env.obs_shape,
    )
    return Throughput(
        config.total_steps / result.act_seconds,
        result.updates / result.learn_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run both loops alternately and print their throughput and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="env steps per run")
    parser.add_argument("--learning-starts", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    log = load_obd("random", "all")
    config = DQNConfig(
        total_steps=args.steps,
        learning_starts=args.learning_starts,
        batch_size=args.batch_size,
        gamma=args.gamma,
        buffer_size=10_000,
        epsilon_duration=max(1, args.steps // 2),
        target_update_interval=100,
        hidden=64,
        seed=0,
    )
    runs: dict[str, list[Throughput]] = {"ours": [], "reference": []}
    for _ in range(args.repeats):
        runs["ours"].append(ours(BanditReplayEnv(log, shuffle=True), config))
        runs["reference"].append(
            reference_dqn(BanditReplayEnv(log, shuffle=True), config)
        )

    def median(name: str, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in runs[name])

    figures = {
        name: {
            "env_steps_per_s": median(name, "env_steps_per_s"),
            "updates_per_s": median(name, "updates_per_s"),
        }
        for name in runs
    }
    figures["ratio"] = {
        key: figures["ours"][key] / figures["reference"][key]
        for key in ("env_steps_per_s", "updates_per_s")
    }
    print(
        f"DQN throughput on OBD replay ({log.n_actions} ads, batch "
        f"{config.batch_size}, gamma {config.gamma}, {config.total_steps} steps, "
        f"median of {args.repeats})"
    )
    print(f"{'loop':<12}{'env steps/s':>14}{'updates/s':>12}")
    for name in ("ours", "reference", "ratio"):
        row = figures[name]
        unit = "x" if name == "ratio" else ""
        print(
            f"{name:<12}{row['env_steps_per_s']:>13.1f}{unit:1}"
            f"{row['updates_per_s']:>11.1f}{unit:1}"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
