"""Pack a batch of requests for the wire and compile the agent graph into a canvas.

A batch travels as one payload: the requests without their candidate ads, plus each
distinct ad once (`ads`), referenced by key from every request that offers it. On the
Open Bandit replay all requests of a campaign share the same 80 ads, so this keeps
a 256-request message a few hundred kilobytes instead of megabytes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery, Signature, chord, group

from ad_orchestrator.graph import AgentGraph
from ad_orchestrator.schemas import AdRequest, CandidateAd

ADVANCE_TASK = "adorch.advance"


def pack_batch(requests: Sequence[AdRequest]) -> dict[str, Any]:
    """Return the wire payload of a batch, with each distinct ad stored once."""
    ads: dict[str, dict[str, Any]] = {}
    keys_of: dict[str, str] = {}
    packed = []
    for request in requests:
        body = request.model_dump(mode="json", exclude={"candidates"})
        refs = []
        for ad in request.candidates:
            data = ad.model_dump(mode="json")
            fingerprint = json.dumps(data, sort_keys=True)
            key = keys_of.get(fingerprint)
            if key is None:
                key = str(len(ads))
                keys_of[fingerprint] = key
                ads[key] = data
            refs.append(key)
        body["candidates"] = refs
        packed.append(body)
    return {"requests": packed, "ads": ads}


def unpack_batch(payload: dict[str, Any]) -> list[AdRequest]:
    """Rebuild the requests of a packed batch (each distinct ad validated once)."""
    ads = {
        key: CandidateAd.model_validate(data) for key, data in payload["ads"].items()
    }
    requests = []
    for body in payload["requests"]:
        fields = dict(body)
        fields["candidates"] = [ads[key] for key in body["candidates"]]
        requests.append(AdRequest.model_validate(fields))
    return requests


def level_chord(
    app: Celery,
    graph: AgentGraph,
    level: int,
    state: dict[str, Any],
    options: dict[str, Any],
) -> Signature:
    """Return the chord that runs one level of agents and then the next step.

    `state` carries the packed batch and the results of earlier levels; every agent
    task of the level gets it, and the body (the next level's launcher, or the
    reducer after the last level) receives the level's results plus the state.
    """
    # Signatures are bound to `app` explicitly: in a thread of a web server the
    # "current app" is Celery's default one, which has no result backend.
    # The state holds the batch; logs and Flower get a short description instead.
    options = dict(options, argsrepr=f"(state: level {level})", kwargsrepr="{}")
    header = group(
        [
            app.signature(graph.tasks[name], args=(state,), options=dict(options))
            for name in graph.levels[level]
        ],
        app=app,
    )
    is_last = level == len(graph.levels) - 1
    body_task = graph.reducer if is_last else ADVANCE_TASK
    body = app.signature(body_task, args=(state,), options=dict(options))
    return chord(header, body, app=app)


def initial_state(
    requests: Sequence[AdRequest],
    *,
    single: bool,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Return the canvas state for a fresh batch."""
    return {
        "batch": pack_batch(requests),
        "upstream": {},
        "level": 0,
        "single": single,
        "started": time.time(),
        "deadline": deadline,
    }


def task_options(deadline: float | None, queue: str) -> dict[str, Any]:
    """Return the per-task options: the queue, and `expires` for deadline-bound work.

    Work whose request already passed its deadline is dropped by the worker rather
    than computed for nobody; a second of slack keeps clock skew from dropping work
    that could still make it.
    """
    options: dict[str, Any] = {"queue": queue}
    if deadline is not None:
        options["expires"] = max(deadline + 1.0 - time.time(), 0.5)
    return options
