"""The Policy agent: what each request may be shown, and whether to personalise.

It runs the rule engine (`policies.engine`) over YAML rule sets loaded and validated
when the agent is built; a worker checks them once more before it forks
(`refuse_to_start_with_bad_rules`), so a broken rule file stops the worker with the
file and field named instead of letting ads through. For a batch it reads every
frequency-cap counter in one MGET, then evaluates each request with Context's and
Content's outputs.

Policy fails closed at two levels. An exception while evaluating one request denies
every candidate of that request (rule `policy.fail_closed`, no-ad reason
`policy_failed`) and the other requests of the batch are still answered; an
exception outside that loop (Redis down, say) fails the batch, and after the bounded
retries `fallback` denies everything for every request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from celery import signals

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.schemas import AdRequest, PolicyOutput
from ad_orchestrator.settings import Settings
from policies import build_engine, fail_closed
from policies.frequency import caps_reached, user_hash
from tasks.base import Agent, Upstream

log = logging.getLogger(__name__)

MSG_REQUEST_FAILED = "policy failed closed for request %s: %s"
MSG_BAD_RULES = "refusing to start: the policy rules are invalid: %s"


class PolicyAgent(Agent[PolicyOutput]):
    """Rules only, never learned: per-ad allow/deny with rule ids, fail closed.

    Raises:
        ConfigError: at construction, when a rule file is invalid.
    """

    name = "policy"

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        super().__init__(settings, client)
        self.engine = build_engine(settings)

    def decide(
        self, requests: Sequence[AdRequest], upstream: Upstream
    ) -> list[PolicyOutput]:
        """Answer for every request of the batch, in order."""
        caps = self.engine.rules.frequency_caps
        reached: list[dict[str, list[str]]] = [{} for _ in requests]
        if caps:
            users = [user_hash(self.settings, request) for request in requests]
            campaigns = [[ad.campaign_id for ad in r.candidates] for r in requests]
            reached = caps_reached(self.redis, self.settings, caps, users, campaigns)
        outputs = []
        for request, capped in zip(requests, reached, strict=True):
            rid = request.request_id
            try:
                evaluation = self.engine.evaluate(
                    request, upstream.context(rid), upstream.content(rid), capped
                )
                outputs.append(evaluation.to_output())
            except Exception as error:  # noqa: BLE001 - any failure denies all
                log.error(MSG_REQUEST_FAILED, rid, error, exc_info=True)
                outputs.append(fail_closed(request))
        return outputs

    def fallback(
        self, requests: Sequence[AdRequest], upstream: Upstream, reason: str
    ) -> list[PolicyOutput]:
        """Deny every ad of every request: Policy could not decide."""
        return [fail_closed(request) for request in requests]


from ad_orchestrator.app import agent_task  # noqa: E402 - after the class

task = agent_task(PolicyAgent)


@signals.worker_init.connect
def refuse_to_start_with_bad_rules(sender: Any = None, **_: Any) -> None:
    """Stop a worker whose rule files are invalid before it takes any task.

    Celery logs and ignores ordinary exceptions raised by signal handlers, so a
    broken rule file would otherwise leave a worker that starts, reports ready
    and fails every Policy task. `SystemExit` is not swallowed: the worker exits
    with the error instead.
    """
    from ad_orchestrator.app import app  # noqa: PLC0415 - the configured app

    settings: Settings = app.adorch_settings
    try:
        build_engine(settings)
    except ConfigError as error:
        log.critical(MSG_BAD_RULES, error)
        raise SystemExit(f"adorch worker: {error}") from None
