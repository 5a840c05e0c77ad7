"""What every agent shares: the batch interface, bounded retries and the fallback.

An agent is a plain class that answers for a whole batch of requests at once
(`Agent.decide`); the Celery task around it is thin (`run_agent_task`). Agents catch
their own errors: after `settings.agent_retries` retries the agent's `fallback` answers
instead and the result is marked, because a header task that raises would fail the
whole chord (`ChordError`) and no decision would come back at all.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

import redis

from ad_orchestrator import metrics
from ad_orchestrator.logging import log_context
from ad_orchestrator.schemas import (
    AGENT_RESULT,
    AdRequest,
    AgentName,
    BudgetOutput,
    ContentOutput,
    ContextOutput,
    PolicyOutput,
)
from ad_orchestrator.settings import Settings

log = logging.getLogger(__name__)

Out = TypeVar("Out", ContextOutput, ContentOutput, BudgetOutput, PolicyOutput)

MSG_FALLBACK = "agent %s fell back for %d request(s) after %d attempt(s): %s"


class ChaosError(RuntimeError):
    """Raised on purpose by an agent named in `settings.chaos_fail_agents`."""


class Upstream:
    """Outputs of agents that ran earlier in the graph, joined by request id."""

    def __init__(self, results: Mapping[str, Any] | None = None) -> None:
        self._by_agent: dict[str, dict[str, Any]] = {}
        self.fallbacks: dict[str, str] = {}
        self.versions: dict[str, str | None] = {}
        self.timings_ms: dict[str, float] = {}
        for name, raw in (results or {}).items():
            result = AGENT_RESULT.validate_python(raw)
            self._by_agent[name] = {out.request_id: out for out in result.outputs}
            self.versions[name] = result.weights_version
            self.timings_ms[name] = result.elapsed_ms
            if result.fallback:
                self.fallbacks[name] = result.fallback_reason or "fallback"

    def __contains__(self, agent: str) -> bool:
        return agent in self._by_agent

    def context(self, request_id: str) -> ContextOutput | None:
        """Return the Context agent's output for a request, if it ran."""
        return self._by_agent.get("context", {}).get(request_id)

    def content(self, request_id: str) -> ContentOutput | None:
        """Return the Content agent's output for a request, if it ran."""
        return self._by_agent.get("content", {}).get(request_id)

    def budget(self, request_id: str) -> BudgetOutput | None:
        """Return the Budget agent's output for a request, if it ran."""
        return self._by_agent.get("budget", {}).get(request_id)

    def policy(self, request_id: str) -> PolicyOutput | None:
        """Return the Policy agent's output for a request, if it ran."""
        return self._by_agent.get("policy", {}).get(request_id)


class Agent(ABC, Generic[Out]):
    """An agent: answers for a batch of requests, with a safe fallback.

    Subclasses are built once per worker process (after fork), so they may hold
    models, compiled rules and Redis connections.
    """

    name: ClassVar[AgentName]

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client

    def weights_version(self) -> str | None:
        """Return the version of the weights this agent serves (None: no weights)."""
        return None

    def warm_up(self) -> None:
        """Load what the first batch would otherwise pay for (after fork)."""

    @abstractmethod
    def decide(self, requests: Sequence[AdRequest], upstream: Upstream) -> list[Out]:
        """Answer for every request of the batch, in the batch's order."""

    @abstractmethod
    def fallback(
        self, requests: Sequence[AdRequest], upstream: Upstream, reason: str
    ) -> list[Out]:
        """Answer safely without the work that failed; must not raise."""

    def run(self, requests: Sequence[AdRequest], upstream: Upstream) -> dict[str, Any]:
        """Decide with bounded retries, else fall back; return a result as JSON data."""
        with log_context(agent=self.name, weights_version=self.weights_version()):
            return self._run(requests, upstream)

    def _run(self, requests: Sequence[AdRequest], upstream: Upstream) -> dict[str, Any]:
        started = time.perf_counter()
        attempts = self.settings.agent_retries + 1
        reason = None
        outputs: list[Out] = []
        for attempt in range(1, attempts + 1):
            try:
                if self.name in self.settings.chaos_fail_agents:
                    raise ChaosError(f"{self.name} fails on purpose (chaos setting)")
                outputs = self.decide(requests, upstream)
                if len(outputs) != len(requests):
                    raise RuntimeError(
                        f"answered {len(outputs)} of {len(requests)} requests"
                    )
                reason = None
                break
            except Exception as error:  # noqa: BLE001 - any failure means fallback
                reason = f"{type(error).__name__}: {error}"
                log.warning(
                    "agent %s attempt %d/%d failed: %s",
                    self.name,
                    attempt,
                    attempts,
                    reason,
                    exc_info=attempt == attempts,
                )
                if attempt < attempts and self.settings.agent_retry_backoff_s:
                    time.sleep(self.settings.agent_retry_backoff_s * attempt)
        if reason is not None:
            log.warning(MSG_FALLBACK, self.name, len(requests), attempts, reason)
            metrics.AGENT_FALLBACKS.labels(self.name).inc()
            outputs = self.fallback(requests, upstream, reason)
        elapsed = time.perf_counter() - started
        metrics.AGENT_LATENCY.labels(self.name).observe(elapsed)
        return {
            "agent": self.name,
            "weights_version": self.weights_version(),
            "fallback": reason is not None,
            "fallback_reason": reason,
            "elapsed_ms": round(elapsed * 1000, 3),
            "outputs": [out.model_dump(mode="json") for out in outputs],
        }
