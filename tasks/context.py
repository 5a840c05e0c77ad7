"""The Context agent: when, where and on what device a request is seen.

For every request of a batch it reads the local hour and weekday (from the request's
time and `geo.utcoffset` or the country's zone), the device class, OS and browser
(OpenRTB `devicetype`, else `device.sua`, else the user-agent string), the country
(ISO alpha-2), the age from `user.yob`, and whether the user agent is a bot (the
reducer gives bots a no-bid). The readable fields are encoded with the shared
`features.encode_context` into one fixed-width vector per request, in one call for
the whole batch. All of the reading lives in `ad_orchestrator.devices`, which the
Content agent uses too, so both agents encode a request the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from ad_orchestrator import devices
from ad_orchestrator.features import encode_context
from ad_orchestrator.schemas import AdRequest, ContextOutput
from ad_orchestrator.settings import Settings
from tasks.base import Agent, Upstream

log = logging.getLogger(__name__)

MSG_BOTS = "context: %d of %d request(s) in the batch come from bots"


def _outputs(
    requests: Sequence[AdRequest], contexts: Sequence[devices.RequestContext]
) -> list[ContextOutput]:
    vectors = encode_context([ctx.fields for ctx in contexts])
    return [
        ContextOutput(
            request_id=request.request_id,
            vector=vector.tolist(),
            hour=ctx.fields.hour,
            weekday=ctx.fields.weekday,
            device_class=ctx.fields.device_class,
            country=ctx.fields.country,
            is_bot=ctx.device.is_bot,
            age=ctx.age,
        )
        for request, ctx, vector in zip(requests, contexts, vectors, strict=True)
    ]


class ContextAgent(Agent[ContextOutput]):
    """Readable context fields and their encoding, for a batch of requests."""

    name = "context"

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        super().__init__(settings, client)
        devices.warm_up()

    def decide(
        self, requests: Sequence[AdRequest], upstream: Upstream
    ) -> list[ContextOutput]:
        """Read and encode every request's context, in the batch's order."""
        contexts = [devices.request_context(request) for request in requests]
        bots = sum(ctx.device.is_bot for ctx in contexts)
        if bots:
            log.info(MSG_BOTS, bots, len(requests))
        return _outputs(requests, contexts)

    def fallback(
        self, requests: Sequence[AdRequest], upstream: Upstream, reason: str
    ) -> list[ContextOutput]:
        """Answer with defaults: UTC time, unknown device and country, no bot flag.

        The result is marked as a fallback by `Agent.run`, which calls this.
        """
        return _outputs(requests, [devices.default_context(r) for r in requests])


from ad_orchestrator.app import agent_task  # noqa: E402 - after the class

task = agent_task(ContextAgent)
