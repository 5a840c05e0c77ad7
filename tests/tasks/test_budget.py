"""The Budget agent bids within budgets and paces, even or learned, on real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch

from ad_orchestrator.ledger import MICROS
from ad_orchestrator.pacing_state import PacingStore
from ad_orchestrator.schemas import parse_request
from ad_orchestrator.settings import Settings
from ad_orchestrator.weights import WeightStore
from rl.pacing import ACTION_STEPS, PacingQNet
from tasks.base import Upstream
from tasks.budget import BudgetAgent, even_pacing, slot_of, value_ratios

CAMPAIGNS = """
campaigns:
  c:
    budget: 1.0
    base_cpm: 2.0
    max_cpm: 3.0
    flight_start: 2024-01-01T00:00:00Z
    flight_end: 2024-01-02T00:00:00Z
"""


def request(rid: str, hour: int) -> Any:
    return parse_request(
        {
            "request_id": rid,
            "timestamp": f"2024-01-01T{hour:02d}:30:00Z",
            "slots": [{"slot_id": "s"}],
            "candidates": [
                {"ad_id": f"a{k}", "campaign_id": "c", "max_cpm": 10} for k in range(3)
            ],
        }
    )


@pytest.fixture
def agent(tmp_path: Path, settings: Settings, redis_client: redis.Redis) -> BudgetAgent:
    path = tmp_path / "campaigns.yaml"
    path.write_text(CAMPAIGNS)
    own = settings.model_copy(update={"campaigns_path": path})
    built = BudgetAgent(own, redis_client)
    built.ledger.reset(["c"])
    built.pacing.reset(["c"])
    return built


@pytest.mark.parametrize(
    ("planned", "spent", "expected"),
    [
        (0.5, 0.5, 1.0),
        (0.1, 1.0, 0.25),
        (0.5, 1.0, 0.51),
        (0.5, 0.0, 2.0),
        (0.3, 0.4, 0.762),
    ],
)
def test_even_pacing_steers_towards_the_plan(
    planned: float, spent: float, expected: float
) -> None:
    """Ahead of plan: bid less; behind: bid more; within fixed bounds."""
    assert even_pacing(planned, spent) == pytest.approx(expected, abs=1e-3)


def test_value_ratios_keep_their_order_around_one() -> None:
    """Better-scored ads bid more; the mean multiplier stays near 1."""
    ratios = value_ratios(np.array([-1.0, 0.0, 1.0]))

    assert list(np.argsort(ratios)) == [0, 1, 2]
    assert ratios.mean() == pytest.approx(1.0, abs=0.05)


def test_bids_stay_under_the_campaign_ceiling(agent: BudgetAgent) -> None:
    """The campaign's max CPM caps every bid, whatever the pacing."""
    [out] = agent.decide([request("r", 23)], Upstream())

    assert set(out.bids) == {"a0", "a1", "a2"}
    assert max(out.bids.values()) <= 3.0
    assert agent.weights_version() is None


def test_a_spent_campaign_bids_no_more(agent: BudgetAgent) -> None:
    """With less left than one impression costs, every ad is ineligible."""
    agent.redis.hset(agent.ledger._campaign_key("c"), "spent", MICROS - 100)

    [out] = agent.decide([request("r", 12)], Upstream())

    assert out.bids == {}
    assert set(out.ineligible.values()) == {"budget_exhausted"}


def publish_pacer(client: redis.Redis, settings: Settings, step: int) -> int:
    """Publish a pacer whose greedy action is always `step`."""
    net = PacingQNet()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        last = list(net.parameters())[-1]
        last[step] = 1.0
    store = WeightStore(client, settings)
    version = store.publish(
        "budget", net.state_dict(), {"input_schema": PacingQNet.INPUT_SCHEMA}
    )
    store.set_serving("budget", version)
    return version


def test_learned_pacing_moves_the_multiplier_once_per_slot(
    agent: BudgetAgent, redis_client: redis.Redis
) -> None:
    """With Budget weights serving, each new slot applies the DQN's step once."""
    up = ACTION_STEPS.index(0.08)
    version = publish_pacer(redis_client, agent.settings, up)
    twin = BudgetAgent(agent.settings, redis_client)  # another worker process

    agent.decide([request("r1", 1)], Upstream())
    twin.decide([request("r2", 1)], Upstream())  # same slot: no second step
    first = agent.pacing.read(["c"])["c"]
    twin.decide([request("r3", 5)], Upstream())  # a later slot: one more step
    later = agent.pacing.read(["c"])["c"]

    assert agent.weights_version() == str(version)
    assert first.slot == slot_of(agent.ledger.campaigns["c"], request("x", 1).timestamp)
    assert first.multiplier == pytest.approx(1.08)
    assert later.multiplier == pytest.approx(1.08 * 1.08)
    assert later.auctions == 3


def test_a_lost_race_reads_the_winners_multiplier(
    agent: BudgetAgent, redis_client: redis.Redis
) -> None:
    """Advancing from a stale slot is refused; state moves once."""
    store = PacingStore(redis_client, agent.settings)

    assert store.advance("c", read_slot=-1, new_slot=3, multiplier=1.5,
                         spent_micros=0, wins=0, auctions=0)  # fmt: skip
    assert not store.advance("c", read_slot=-1, new_slot=3, multiplier=0.5,
                             spent_micros=0, wins=0, auctions=0)  # fmt: skip
    assert store.read(["c"])["c"].multiplier == pytest.approx(1.5)
