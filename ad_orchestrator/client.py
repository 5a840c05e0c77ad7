"""The deadline-aware way for a web backend to ask for decisions.

`decide` builds the same canvas as `gather_results` in the caller's process (one hop
fewer), waits at most until the deadline (the request's `tmax_ms`, else the settings'
`deadline_ms`), and when the deadline passes returns the fallback decision (the house
ad when one is configured, else a no-bid with reason `deadline`, marked
`fallback=True`). It never hangs and never raises on a timeout, and it releases the
result subscription of work it gave up on (`forget`), so a busy web process does not
leak subscriptions. Stale work it gave up on is dropped by the workers (`expires`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, overload

from celery.exceptions import TimeoutError as CeleryTimeout

from ad_orchestrator import metrics
from ad_orchestrator.app import app, parse_edge, runtime
from ad_orchestrator.coordinator import initial_state, level_chord, task_options
from ad_orchestrator.schemas import AdRequest, Decision
from ad_orchestrator.settings import Settings

log = logging.getLogger(__name__)


def fallback_decision(request: AdRequest, settings: Settings) -> Decision:
    """Return what is served when the deadline passes: the house ad, or a no-bid."""
    if settings.house_ad_id is not None:
        return Decision(
            request_id=request.request_id,
            outcome="bid",
            ad_id=settings.house_ad_id,
            slot_id=request.slots[0].slot_id,
            bid_cpm=0.0,
            fallback=True,
        )
    return Decision(
        request_id=request.request_id,
        outcome="no_bid",
        no_bid_reason="deadline",
        fallback=True,
    )


def deadline_for(requests: Sequence[AdRequest], settings: Settings) -> float:
    """Return the batch's deadline in seconds from now (the tightest `tmax`)."""
    limits = [r.tmax_ms for r in requests if r.tmax_ms is not None]
    return (min(limits) if limits else settings.deadline_ms) / 1000.0


def _wait(result: Any, deadline: float) -> Any:
    """Return a result's value by `deadline` (monotonic), else raise a timeout.

    `AsyncResult.get(timeout=...)` on the Redis backend waits on pub/sub in steps
    of a whole second whatever `interval` says, so a 300 ms deadline could be
    overrun by up to a second. Polling the result key (one GET per step, steps
    growing from 2 to 10 ms) keeps the overrun to one step.
    """
    step = 0.002
    while True:
        if result.ready():
            if result.failed():
                raise result.result
            return result.result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CeleryTimeout(f"no result for {result.id} by the deadline")
        time.sleep(min(step, remaining))
        step = min(step * 1.5, 0.01)


@overload
def decide(
    request_or_batch: AdRequest | dict[str, Any],
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
) -> Decision: ...
@overload
def decide(
    request_or_batch: Sequence[AdRequest | dict[str, Any]],
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
) -> list[Decision]: ...
def decide(
    request_or_batch: Any,
    *,
    settings: Settings | None = None,
    timeout: float | None = None,
) -> Decision | list[Decision]:
    """Decide for one request or a batch within the deadline; never raise on timeout.

    Args:
        request_or_batch: An `AdRequest` (or its dict), or a list of them.
        settings: The caller's settings; the app's when omitted.
        timeout: Seconds to wait; the request's `tmax_ms` (or `deadline_ms`) when
            omitted.

    Raises:
        RequestValidationError: A request is malformed (names the field).
    """
    started = time.monotonic()
    settings = settings or runtime().settings
    single = not isinstance(request_or_batch, list | tuple)
    items = [request_or_batch] if single else list(request_or_batch)
    requests = parse_edge(items, settings)
    wait = timeout if timeout is not None else deadline_for(requests, settings)
    deadline = time.time() + wait
    state = initial_state(requests, single=False, deadline=deadline)
    canvas = level_chord(
        app, runtime().graph, 0, state, task_options(deadline, settings.queue)
    )
    result = None
    try:
        result = canvas.apply_async()
        decisions: list[Decision] = _wait(result, started + wait)
    except CeleryTimeout:
        decisions = [fallback_decision(r, settings) for r in requests]
        log.warning(
            "deadline of %.0f ms passed for %d request(s); served the fallback",
            wait * 1000,
            len(requests),
        )
    except Exception:  # noqa: BLE001 - a broken backend must not break the page
        log.exception("decision failed; served the fallback")
        decisions = [fallback_decision(r, settings) for r in requests]
    finally:
        if result is not None and not result.ready():
            result.forget()
    if any(d.fallback for d in decisions):
        elapsed = time.monotonic() - started
        for _ in decisions:
            metrics.DECISION_LATENCY.labels("fallback").observe(elapsed)
    return decisions[0] if single else decisions


__all__ = ["app", "decide", "fallback_decision"]
