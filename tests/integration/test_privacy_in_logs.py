"""No raw user or device identifier, nor any IP address, outlives the edge.

A real worker decides OpenRTB requests carrying a user id, a device advertising id
and an IP address, through both entry points, and the decisions get feedback. Then
every key and value in the run's Redis database and the worker's whole log are
scanned for the raw values: none may be there.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from ad_orchestrator.settings import REPO_ROOT
from tests.conftest import start_worker

pytestmark = pytest.mark.integration

RAW_USER = "raw-user-7f3a9c1e"
RAW_IFA = "AA000DFE74168477C70D291f574D344790E0BB11"
RAW_IP = "203.0.113.77"
RAW_BUYER = "buyer-uid-55aa77"


def bid_request(rid: str) -> dict[str, Any]:
    path = REPO_ROOT / "tests/fixtures/openrtb/requests/spec26_ex3_mobile_app.json"
    request = copy.deepcopy(json.loads(path.read_text()))
    request["id"] = rid
    request["device"].update(ip=RAW_IP, ifa=RAW_IFA)
    request["user"] = {"id": RAW_USER, "buyeruid": RAW_BUYER, "yob": 1980}
    return request


def everything_in(client: redis.Redis) -> Iterator[bytes]:
    """Yield every key and every value of the database, whatever the type."""
    for key in client.scan_iter():
        yield key
        kind = client.type(key)
        if kind == b"string":
            yield client.get(key) or b""
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                yield field + b"=" + value
        elif kind == b"list":
            yield from client.lrange(key, 0, -1)
        elif kind == b"set":
            yield from client.smembers(key)
        elif kind == b"zset":
            yield from client.zrange(key, 0, -1)
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                yield from (k + b"=" + v for k, v in fields.items())


def test_raw_identifiers_reach_no_log_and_no_stream(redis_url: str) -> None:
    """Ids are pseudonymised at the edge; the IP is dropped at validation."""
    queue = f"{os.environ['ADORCH_QUEUE']}-privacy"
    worker = start_worker(
        "privacy",
        extra_env={"ADORCH_QUEUE": queue, "ADORCH_LOG_JSON": "true",
                   "ADORCH_LOG_LEVEL": "DEBUG"},
    )  # fmt: skip
    from ad_orchestrator.app import app
    from ad_orchestrator.client import decide
    from ad_orchestrator.openrtb import bid_request_to_ad_request
    from ad_orchestrator.settings import load_settings

    settings = load_settings(queue=queue)
    try:
        via_client = decide(
            bid_request_to_ad_request(bid_request("p-1")), settings=settings, timeout=90
        )
        raw = bid_request_to_ad_request(bid_request("p-2")).model_dump(mode="json")
        via_task = app.signature("adorch.gather_results", args=(raw,), queue=queue)
        decided = [via_client, via_task.apply_async().get(timeout=90)]
        for decision in decided:
            for kind in ("impression", "click"):
                app.signature(
                    "adorch.record_feedback",
                    args=({"event_id": f"{decision.decision_id}-{kind}",
                           "decision_id": decision.decision_id, "kind": kind,
                           "value": 1.0},),
                    queue=queue,
                ).apply_async().get(timeout=20)  # fmt: skip
    finally:
        worker.stop()

    assert [d.outcome for d in decided] == ["bid", "bid"]
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(settings.feedback_stream) >= 4
    assert client.xlen(settings.key("decisions")) >= 2
    haystacks = {
        "redis": b"\n".join(everything_in(client)).decode(errors="replace"),
        "worker log": worker.log_text(),
    }
    for where, text in haystacks.items():
        for raw_value in (RAW_USER, RAW_IFA, RAW_IP, RAW_BUYER):
            assert raw_value not in text, f"{raw_value} found in the {where}"
    assert "adorch.reduce" in haystacks["worker log"]
