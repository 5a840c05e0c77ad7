"""The budget ledger reserves, settles and releases exactly, on real Redis."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import redis

from ad_orchestrator.errors import BudgetError, ConfigError
from ad_orchestrator.ledger import BudgetLedger, Campaign, load_campaigns
from ad_orchestrator.settings import Settings

BID = 2.0  # CPM: one impression costs 0.002


@pytest.fixture
def ledger(redis_client: redis.Redis, settings: Settings) -> BudgetLedger:
    campaigns = {"c": Campaign(budget=10 * BID / 1000, base_cpm=BID, max_cpm=BID)}
    book = BudgetLedger(redis_client, settings, campaigns)
    book.reset(["c"])
    return book


def test_reservations_stop_at_the_budget(ledger: BudgetLedger) -> None:
    """Budget for ten impressions admits exactly ten reservations."""
    admitted = [ledger.reserve("c", f"d{i}", BID) for i in range(15)]

    assert admitted == [True] * 10 + [False] * 5
    state = ledger.states(["c"])["c"]
    assert state.reserved == pytest.approx(10 * BID / 1000)
    assert state.remaining == pytest.approx(0.0)


def test_concurrent_reservations_never_overspend(ledger: BudgetLedger) -> None:
    """200 threads racing for ten impressions' budget get ten between them."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        admitted = list(
            pool.map(lambda i: ledger.reserve("c", f"d{i}", BID), range(200))
        )

    state = ledger.states(["c"])["c"]
    assert sum(admitted) == 10
    assert state.spent + state.reserved <= state.budget + 1e-12


def test_settling_charges_the_price_paid_once(ledger: BudgetLedger) -> None:
    """An impression costs its second price; a repeated settle changes nothing."""
    ledger.reserve("c", "d1", BID)

    first = ledger.settle("d1", 1.0)
    again = ledger.settle("d1", 1.0)

    state = ledger.states(["c"])["c"]
    assert first == pytest.approx(0.001)
    assert again is None
    assert state.spent == pytest.approx(0.001)
    assert state.reserved == pytest.approx(0.0)


def test_a_price_above_the_bid_is_capped_at_the_bid(ledger: BudgetLedger) -> None:
    """The reservation is the ceiling: a wrong price cannot overspend."""
    ledger.reserve("c", "d1", BID)

    assert ledger.settle("d1", 50.0) == pytest.approx(BID / 1000)


def test_unanswered_reservations_are_released_after_the_window(
    ledger: BudgetLedger,
) -> None:
    """Reservations with no impression return their money when they fall due."""
    ledger.reserve("c", "d1", BID, now=1000.0)
    ledger.reserve("c", "d2", BID, now=5000.0)
    window = ledger.settings.reservation_window_s

    released = ledger.release_expired(now=1000.0 + window + 1)

    state = ledger.states(["c"])["c"]
    assert released == 1
    assert state.reserved == pytest.approx(BID / 1000)
    assert ledger.settle("d1", 1.0) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda book: book.reserve("c", "d", 0.0), "bid_cpm must be positive"),
        (lambda book: book.reserve("nope", "d", 1.0), "campaign 'nope'"),
    ],
)
def test_bad_ledger_calls_are_refused(ledger: BudgetLedger, call, message: str) -> None:  # type: ignore[no-untyped-def]
    """Refusals name what was wrong."""
    with pytest.raises(BudgetError, match=message):
        call(ledger)


def test_a_decision_cannot_reserve_twice(ledger: BudgetLedger) -> None:
    """A retried decision does not double its reservation."""
    ledger.reserve("c", "d1", BID)

    with pytest.raises(BudgetError, match="already holds"):
        ledger.reserve("c", "d1", BID)


def test_even_plan_over_a_flight_and_a_day() -> None:
    """The plan is linear over the flight, else over the UTC day."""
    flight = Campaign(
        budget=1,
        base_cpm=1,
        max_cpm=1,
        flight_start=datetime(2024, 1, 1, tzinfo=UTC),
        flight_end=datetime(2024, 1, 3, tzinfo=UTC),
    )
    daily = Campaign(budget=1, base_cpm=1, max_cpm=1)
    noon = datetime(2024, 1, 2, 12, tzinfo=UTC)

    assert flight.planned_fraction(noon) == pytest.approx(0.75)
    assert daily.planned_fraction(noon) == pytest.approx(0.5)


def test_a_bad_campaigns_file_names_itself(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A campaign without a budget stops start-up with the file's name."""
    path = tmp_path / "campaigns.yaml"
    path.write_text("campaigns:\n  c: {base_cpm: 1, max_cpm: 2}\n")

    with pytest.raises(ConfigError, match="campaigns.yaml"):
        load_campaigns(path)


def test_an_impression_after_release_is_still_charged_once(
    ledger: BudgetLedger,
) -> None:
    """Money spent after the window still counts, capped at the bid, once."""
    ledger.reserve("c", "d1", BID, now=1000.0)
    ledger.release_expired(now=1e12)

    first = ledger.settle("d1", 1.5, campaign_id="c", bid_cpm=BID)
    again = ledger.settle("d1", 1.5, campaign_id="c", bid_cpm=BID)

    state = ledger.states(["c"])["c"]
    assert first == pytest.approx(0.0015)
    assert again is None
    assert (state.spent, state.reserved) == (pytest.approx(0.0015), 0.0)


def test_a_reservation_outlives_its_window(
    ledger: BudgetLedger, redis_client: redis.Redis
) -> None:
    """The record is kept until released: its money can always be returned."""
    ledger.reserve("c", "d1", BID)

    ttl = redis_client.ttl(ledger._resv_key("d1"))

    assert ttl > ledger.settings.reservation_window_s + 3600
