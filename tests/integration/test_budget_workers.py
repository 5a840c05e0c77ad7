"""Budget under real concurrency: eight worker processes, one campaign.

Eight single-process workers consume one queue and decide for one campaign with
budget for about twenty impressions. Spend (reserved) never passes the budget by more
than one bid, and reservations that see no impression return after the window.
Decisions carry the Budget weights version that serves.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis

from ad_orchestrator.settings import Settings
from tests.conftest import start_worker
from tests.integration.test_pipeline import make_request
from tests.tasks.test_budget import publish_pacer

pytestmark = pytest.mark.integration

BID = 2.0
WINDOW_S = 3


def test_eight_workers_never_overspend_and_release_on_time(
    tmp_path: Path, settings: Settings, redis_url: str
) -> None:
    """200 decisions over 8 workers: spend <= budget + 1 bid; reservations return."""
    campaigns = tmp_path / "campaigns.yaml"
    campaigns.write_text(
        f"campaigns:\n  shared:\n    budget: {20 * BID / 1000}\n"
        f"    base_cpm: {BID}\n    max_cpm: {BID}\n"
    )
    queue = f"{os.environ['ADORCH_QUEUE']}-eight"
    env = {
        "ADORCH_QUEUE": queue,
        "ADORCH_CAMPAIGNS_PATH": str(campaigns),
        "ADORCH_RESERVATION_WINDOW_S": str(WINDOW_S),
    }
    client = redis.Redis.from_url(redis_url)
    own = settings.model_copy(
        update={"queue": queue, "campaigns_path": campaigns,
                "reservation_window_s": WINDOW_S}
    )  # fmt: skip
    version = publish_pacer(client, own, step=3)  # the "0%" step: keep multiplier
    from ad_orchestrator.app import app
    from ad_orchestrator.client import decide
    from ad_orchestrator.ledger import BudgetLedger, load_campaigns

    ledger = BudgetLedger(client, own, load_campaigns(campaigns))
    ledger.reset(["shared"])
    with ThreadPoolExecutor(max_workers=8) as pool:
        workers = list(
            pool.map(
                lambda i: start_worker(f"eight-{i}", concurrency=1, extra_env=env),
                range(8),
            )
        )
    try:
        with ThreadPoolExecutor(max_workers=24) as pool:
            decisions: list[Any] = list(
                pool.map(
                    lambda i: decide(
                        make_request(f"eight-{i}", "shared"), settings=own, timeout=60
                    ),
                    range(200),
                )
            )
        held = ledger.states(["shared"])["shared"]
        time.sleep(WINDOW_S + 0.5)
        released = app.signature(
            "adorch.release_reservations", queue=queue
        ).apply_async().get(timeout=30)  # fmt: skip
        after = ledger.states(["shared"])["shared"]
    finally:
        for worker in workers:
            worker.stop()

    bids = [d for d in decisions if d.outcome == "bid"]
    served_by = {w.node for w in workers if "adorch.reduce" in w.log_text()}
    assert not any(d.fallback for d in decisions)
    assert held.spent + held.reserved <= held.budget + BID / 1000
    assert sum(d.bid_cpm or 0 for d in bids) / 1000 <= held.budget + BID / 1000
    assert len(bids) >= 20
    assert len(served_by) >= 2
    assert {d.weights_versions.get("budget") for d in bids} == {str(version)}
    assert released == len(bids)
    assert after.reserved == pytest.approx(0.0)
