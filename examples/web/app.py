"""A web backend calling the decision service: what an ad server's edge looks like.

Routes:
    POST /decide     an `AdRequest`, or an OpenRTB 2.6 BidRequest (told apart by
                     shape), answered within its `tmax` with a Decision or a
                     BidResponse (HTTP 204 for an OpenRTB no-bid);
    POST /feedback   a `FeedbackEvent` (impression, click, conversion), recorded
                     idempotently;
    GET  /metrics    Prometheus exposition (multiprocess-aware);
    GET  /healthz    liveness: the process answers;
    GET  /readyz     readiness: a worker consuming our queue answers.

Run it with `make web` (`uvicorn examples.web.app:app`). Decisions go through the
deadline-aware client (`ad_orchestrator.client.decide`), which serves the fallback
when the deadline passes, so a stopped worker degrades answers, never the page.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ad_orchestrator import metrics
from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.logging import configure_logging, log_context
from ad_orchestrator.schemas import Decision, parse_feedback, parse_request
from ad_orchestrator.settings import Settings, load_settings

logger = logging.getLogger(__name__)

# Kept back from the deadline for serialising and sending the answer: a share of
# tmax, and never less than a floor, since a busy host delays the last steps too.
RESPONSE_MARGIN_SHARE = 0.2
RESPONSE_MARGIN_MIN_S = 0.04
# Never wait less than this for the service, even when the deadline is nearly gone.
MIN_WAIT_S = 0.005


def is_bid_request(body: Any) -> bool:
    """Tell an OpenRTB BidRequest from an `AdRequest` by its shape.

    A BidRequest has `id` and a list `imp`; an `AdRequest` has `request_id`,
    `slots` and `candidates`.
    """
    return (
        isinstance(body, dict)
        and "request_id" not in body
        and isinstance(body.get("imp"), list)
        and "id" in body
    )


def wait_budget(tmax_s: float, arrived: float, now: float | None = None) -> float:
    """Return how long the service may take so the answer leaves within `tmax_s`.

    Args:
        tmax_s: The request's deadline in seconds, counted from `arrived`.
        arrived: `time.monotonic()` when the request reached the app.
        now: The current monotonic time (defaults to now).
    """
    spent = (time.monotonic() if now is None else now) - arrived
    margin = max(RESPONSE_MARGIN_SHARE * tmax_s, RESPONSE_MARGIN_MIN_S)
    return max(tmax_s - spent - margin, MIN_WAIT_S)


def _problem(status: int, payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse(payload, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the web app; configures logging for the `web` entry point.

    Args:
        settings: The service settings; read from the environment when omitted.
    """
    settings = settings or load_settings()
    configure_logging(settings, "web")
    metrics.DECISION_DEADLINE.set(settings.deadline_ms / 1000.0)
    api = FastAPI(
        title="ad-orchestrator web example",
        description="Asks the multi-agent service for a decision within tmax.",
    )

    @api.middleware("http")
    async def _time_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.arrived = time.monotonic()
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.WEB_REQUEST_LATENCY.labels(
            getattr(route, "path", "unmatched"), str(response.status_code)
        ).observe(time.monotonic() - request.state.arrived)
        return response

    @api.post("/decide")
    async def decide_route(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        # The client blocks on the result backend for up to tmax: a worker
        # thread keeps the event loop free for other requests meanwhile.
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_decide, body, settings, request.state.arrived)

    @api.post("/feedback")
    async def feedback_route(request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, Response):
            return body
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(_feedback, body)

    @api.get("/metrics")
    def metrics_route() -> Response:
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    @api.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    def readyz() -> Response:
        from ad_orchestrator.app import app as celery_app
        from ad_orchestrator.workers import workers_answering

        try:
            # Only workers consuming our queue can serve /decide.
            workers = workers_answering(celery_app, settings.queue, timeout=0.5)
        except Exception as error:  # noqa: BLE001 - any broker failure: not ready
            return _problem(503, {"status": "broker unreachable", "error": str(error)})
        if not workers:
            return _problem(503, {"status": "no worker answers", "workers": []})
        return JSONResponse({"status": "ready", "workers": workers})

    return api


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as error:
        return _problem(
            400,
            {
                "error": "invalid JSON",
                "detail": f"the body must be a JSON object ({error})",
            },
        )


def _decide(body: Any, settings: Settings, arrived: float) -> Response:
    from ad_orchestrator.client import decide

    openrtb = is_bid_request(body)
    try:
        if openrtb:
            from ad_orchestrator.openrtb import bid_request_to_ad_request

            ad_request = bid_request_to_ad_request(body)
        else:
            ad_request = parse_request(body)
    except RequestValidationError as error:
        return _problem(422, error.to_dict())
    tmax_ms = ad_request.tmax_ms or settings.deadline_ms
    with log_context(request_id=ad_request.request_id):
        decision: Decision = decide(
            ad_request,
            settings=settings,
            timeout=wait_budget(tmax_ms / 1000.0, arrived),
        )
        with log_context(decision_id=decision.decision_id):
            logger.info(
                "decided %s%s in %.1f ms",
                decision.outcome,
                " (fallback)" if decision.fallback else "",
                (time.monotonic() - arrived) * 1000,
            )
    headers = {"X-Adorch-Decision-Id": decision.decision_id}
    if decision.fallback:
        headers["X-Adorch-Fallback"] = "deadline"
    if not openrtb:
        return JSONResponse(decision.model_dump(mode="json"), headers=headers)
    if decision.outcome == "no_bid":
        # OpenRTB's usual way to say "no bid": an empty 204 answer.
        headers["X-Adorch-No-Bid-Reason"] = str(decision.no_bid_reason)
        return Response(status_code=204, headers=headers)
    from ad_orchestrator.openrtb import decision_to_bid_response

    ads = {ad.ad_id: ad for ad in ad_request.candidates}
    return JSONResponse(decision_to_bid_response(decision, body, ads), headers=headers)


def _feedback(body: Any) -> Response:
    from ad_orchestrator.app import runtime

    try:
        event = parse_feedback(body)
    except RequestValidationError as error:
        return _problem(422, error.to_dict())
    with log_context(decision_id=event.decision_id):
        recorded = runtime().feedback.record(event)
    return JSONResponse(
        {"event_id": recorded.event_id, "duplicate": recorded.duplicate},
        status_code=200 if recorded.duplicate else 201,
    )


_built: dict[str, FastAPI] = {}


def __getattr__(name: str) -> FastAPI:
    # `uvicorn examples.web.app:app` builds the app on first access, so importing
    # this module (tests, tools) configures nothing and reads no settings.
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if "app" not in _built:
        _built["app"] = create_app()
    return _built["app"]
