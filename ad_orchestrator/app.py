"""The Celery application: agent tasks, the coordinator, the reducer and feedback.

This module is the worker's entry point (`celery -A ad_orchestrator.app worker`): it
reads the settings once, finds or starts Redis, and configures Celery. Everything a
worker process holds (Redis connections, agents with their models, the reducer) is
built after fork, in `worker_process_init`, never at import.

Tasks:
    adorch.gather_results   one request or a batch -> Decision or list[Decision]
    adorch.agent.<name>     one agent on a packed batch -> its AgentResult (as data)
    adorch.advance          chord body between graph levels
    adorch.reduce           chord body after the last level -> decisions
    adorch.record_feedback  one FeedbackEvent -> {"event_id", "duplicate"}
    adorch.release_reservations  beat: return budget held by unanswered decisions
"""

from __future__ import annotations

import logging
import os
import time
from functools import cached_property
from typing import Any

import redis
from celery import Celery, Task, signals

from ad_orchestrator import metrics, wire
from ad_orchestrator.coordinator import (
    initial_state,
    level_chord,
    task_options,
    unpack_batch,
)
from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.feedback import FeedbackLog
from ad_orchestrator.graph import AgentGraph
from ad_orchestrator.ledger import BudgetLedger, load_campaigns
from ad_orchestrator.logging import connect_celery_logging
from ad_orchestrator.metrics import connect_worker_signals
from ad_orchestrator.pacing_state import PacingStore
from ad_orchestrator.privacy import pseudonymise
from ad_orchestrator.redis_server import resolve_redis_url, to_celery_url
from ad_orchestrator.reducer import Reducer
from ad_orchestrator.schemas import AdRequest, Decision, parse_request
from ad_orchestrator.settings import Settings, load_settings
from tasks.base import Agent, Upstream
from tasks.retrain import make_beat_schedule

log = logging.getLogger(__name__)

AGENT_MODULES = ("tasks.context", "tasks.content", "tasks.budget", "tasks.policy")


class AdOrchestratorApp(Celery):
    """The Celery app, carrying the settings it was built from and its Redis URL."""

    def __init__(self, settings: Settings, redis_url: str, **kwargs: Any) -> None:
        super().__init__("adorch", **kwargs)
        self.adorch_settings = settings
        self.adorch_redis_url = redis_url


def create_app(settings: Settings) -> AdOrchestratorApp:
    """Build the Celery app for these settings (finding or starting Redis)."""
    redis_url = resolve_redis_url(settings)
    broker = settings.broker_url or to_celery_url(redis_url)
    celery = AdOrchestratorApp(
        settings, redis_url, broker=broker, backend=to_celery_url(redis_url)
    )
    celery.conf.update(
        task_serializer=wire.SERIALIZER,
        result_serializer=wire.SERIALIZER,
        accept_content=[wire.CONTENT_TYPE, "application/json"],
        result_accept_content=[wire.CONTENT_TYPE, "application/json"],
        event_serializer="json",
        task_default_queue=settings.queue,
        # Chord counters expire with results: keep them longer than any chord.
        result_expires=settings.result_expires_s,
        worker_prefetch_multiplier=1,
        # The default beat scheduler keeps its state with shelve, which pickles.
        beat_scheduler="celery.beat:Scheduler",
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        redis_backend_health_check_interval=30,
        beat_schedule={
            "release-reservations": {
                "task": "adorch.release_reservations",
                "schedule": 30.0,
            },
            **make_beat_schedule(settings),
        },
        include=[*AGENT_MODULES, "tasks.retrain"],
    )
    return celery


SETTINGS = load_settings()
app = create_app(SETTINGS)
connect_celery_logging(SETTINGS)
connect_worker_signals(SETTINGS.metrics_port)


class Runtime:
    """What one process holds: connections, agents, the reducer. Built lazily."""

    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.pid = os.getpid()
        self.agents: dict[str, Agent[Any]] = {}

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    @cached_property
    def graph(self) -> AgentGraph:
        return AgentGraph.load(self.settings.graph_path)

    @cached_property
    def ledger(self) -> BudgetLedger:
        return BudgetLedger(
            self.redis, self.settings, load_campaigns(self.settings.campaigns_path)
        )

    @cached_property
    def reducer(self) -> Reducer:
        return Reducer(self.settings, self.redis, self.ledger)

    @cached_property
    def feedback(self) -> FeedbackLog:
        return FeedbackLog(self.redis, self.settings, self.ledger)

    def reset_campaigns(self, campaign_ids: list[str]) -> None:
        """Forget spend, reservations and pacing of campaigns (replays start clean)."""
        self.ledger.reset(campaign_ids)
        PacingStore(self.redis, self.settings).reset(campaign_ids)

    def agent(self, cls: type[Agent[Any]]) -> Agent[Any]:
        """Return this process's instance of an agent class."""
        found = self.agents.get(cls.name)
        if found is None:
            found = self.agents[cls.name] = cls(self.settings, self.redis)
        return found


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """Return this process's runtime, rebuilding it after a fork."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(app.adorch_settings, app.adorch_redis_url)
    return _runtime


@signals.worker_process_init.connect
def _build_after_fork(**_: Any) -> None:
    # Models and connections are made in the child, never inherited across fork.
    # One intra-op thread per child: the pool already runs one child per core, and
    # torch's default of one thread per core in every child oversubscribes them.
    import torch

    torch.set_num_threads(1)
    current = runtime()
    for module in AGENT_MODULES:
        agent_cls = getattr(__import__(module, fromlist=["task"]), "AGENT_CLASS", None)
        if agent_cls is not None:
            current.agent(agent_cls).warm_up()


def agent_task(cls: type[Agent[Any]]) -> Task:
    """Register the thin Celery task that runs one agent class on a packed batch."""

    def run_agent(state: dict[str, Any]) -> dict[str, Any]:
        requests = unpack_batch(state["batch"])
        upstream = Upstream(state.get("upstream"))
        return runtime().agent(cls).run(requests, upstream)

    run_agent.__name__ = f"{cls.name}_agent"
    run_agent.__doc__ = f"Run the {cls.name} agent on a packed batch of requests."
    task: Task = app.task(name=f"adorch.agent.{cls.name}")(run_agent)
    module = __import__(cls.__module__, fromlist=["AGENT_CLASS"])
    setattr(module, "AGENT_CLASS", cls)  # noqa: B010 - found by worker_process_init
    return task


def parse_edge(items: list[Any], settings: Settings) -> list[AdRequest]:
    """Validate requests where they enter the service and pseudonymise their ids.

    Agents' answers are joined by request id, so ids must be unique in a batch.
    """
    salt = settings.secret("id_salt")
    requests = [pseudonymise(parse_request(item), salt) for item in items]
    seen: dict[str, int] = {}
    for index, request in enumerate(requests):
        first = seen.get(request.request_id)
        if first is not None:
            problem = (
                f"repeats request {first}'s id {request.request_id!r}; ids must be "
                "unique in a batch"
            )
            raise RequestValidationError("batch", [(f"{index}.request_id", problem)])
        seen[request.request_id] = index
    return requests


def _parse_all(request_or_batch: Any) -> tuple[list[AdRequest], bool]:
    settings = runtime().settings
    if isinstance(request_or_batch, list | tuple):
        return parse_edge(list(request_or_batch), settings), False
    return parse_edge([request_or_batch], settings), True


def redacted(args: Any) -> str:
    """Describe a task's arguments for logs and Flower without their contents.

    Celery logs and shows `argsrepr`; by default that is the arguments' repr, which
    would put raw user ids from a caller's request into worker logs and Flower.
    """
    items = args[0] if args else None
    if isinstance(items, list | tuple):
        ids = [i.get("request_id", "?") for i in items[:3] if isinstance(i, dict)]
        more = f", +{len(items) - 3}" if len(items) > 3 else ""
        return f"(batch of {len(items)}: {', '.join(map(str, ids))}{more})"
    if isinstance(items, dict):
        if "batch" in items:
            return f"(state: level {items.get('level')})"
        return f"(request {items.get('request_id', '?')})"
    return f"({len(args or ())} argument(s))"


class EdgeTask(Task):
    """A task that callers send requests to: its arguments never reach a log."""

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        options.setdefault("argsrepr", redacted(args))
        options.setdefault("kwargsrepr", "{}")
        return super().apply_async(args, kwargs, **options)


@app.task(name="adorch.gather_results", bind=True, base=EdgeTask)
def gather_results(self: Task, request_or_batch: Any) -> Decision | list[Decision]:
    """Decide for one request (returns a Decision) or a batch (a list of them).

    The task replaces itself with the canvas compiled from the agent graph, so the
    caller's result resolves to the reducer's decisions. A malformed request raises
    `RequestValidationError` naming the field.
    """
    requests, single = _parse_all(request_or_batch)
    settings = runtime().settings
    state = initial_state(requests, single=single)
    raise self.replace(
        level_chord(app, runtime().graph, 0, state, task_options(None, settings.queue))
    )


@app.task(name="adorch.advance", bind=True)
def advance(self: Task, results: list[dict[str, Any]], state: dict[str, Any]) -> Any:
    """Join a level's agent results by name and start the next level's chord."""
    upstream = dict(state["upstream"])
    upstream.update({result["agent"]: result for result in results})
    following = dict(state, upstream=upstream, level=state["level"] + 1)
    options = task_options(state.get("deadline"), runtime().settings.queue)
    graph = PROBE_GRAPH if state.get("probe") else runtime().graph
    raise self.replace(level_chord(app, graph, following["level"], following, options))


@app.task(name="adorch.reduce")
def reduce_decisions(
    results: list[dict[str, Any]], state: dict[str, Any]
) -> Decision | list[Decision]:
    """Combine every agent's results into the batch's decisions."""
    joined = dict(state["upstream"])
    joined.update({result["agent"]: result for result in results})
    requests = unpack_batch(state["batch"])
    decisions = runtime().reducer.reduce(requests, Upstream(joined))
    elapsed = time.time() - state["started"]
    for decision in decisions:
        metrics.DECISION_LATENCY.labels(decision.outcome).observe(elapsed)
    return decisions[0] if state["single"] else decisions


# The probe: the same canvas shape as a decision (gather, two chord levels with
# `adorch.advance` between them, one body) with tasks that do nothing, so the
# benchmark can show how much of a decision's latency is Celery's own floor.
PROBE_GRAPH = AgentGraph.from_dict(
    {
        "agents": {
            "context": {"task": "adorch.probe.agent"},
            "content": {"task": "adorch.probe.agent"},
            "budget": {"task": "adorch.probe.agent", "inputs": ["content"]},
            "policy": {"task": "adorch.probe.agent", "inputs": ["context", "content"]},
        },
        "reducer": "adorch.probe.reduce",
    },
    "probe graph",
)


@app.task(name="adorch.probe.gather", bind=True)
def probe_gather(self: Task, n_requests: int) -> Any:
    """Start the no-op canvas of a decision's shape (the Celery floor)."""
    state = {"batch": n_requests, "upstream": {}, "level": 0, "probe": True}
    options = task_options(None, runtime().settings.queue)
    raise self.replace(level_chord(app, PROBE_GRAPH, 0, state, options))


@app.task(name="adorch.probe.agent")
def probe_agent(state: dict[str, Any]) -> dict[str, Any]:
    """Do nothing, as an agent would answer."""
    return {"agent": f"probe-{state['level']}"}


@app.task(name="adorch.probe.reduce")
def probe_reduce(results: list[dict[str, Any]], state: dict[str, Any]) -> int:
    """Do nothing, as the reducer would answer."""
    return int(state["batch"])


@app.task(name="adorch.record_feedback", base=EdgeTask)
def record_feedback(event: dict[str, Any]) -> dict[str, Any]:
    """Record one feedback event, idempotently by its event id."""
    recorded = runtime().feedback.record(event)
    return {"event_id": recorded.event_id, "duplicate": recorded.duplicate}


@app.task(name="adorch.release_reservations")
def release_reservations() -> int:
    """Release budget reservations whose decisions saw no impression in time."""
    released = runtime().ledger.release_expired()
    if released:
        log.info("released %d expired budget reservations", released)
    return released
