"""The Context agent (`tasks.context`): fields, encoding, bots and its fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fakeredis
import pytest

from ad_orchestrator import devices
from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.features import (
    CONTEXT_DIM,
    DEVICE_CLASSES,
    ContextFields,
    encode_context,
)
from ad_orchestrator.openrtb import bid_request_to_ad_request
from ad_orchestrator.schemas import AdRequest
from ad_orchestrator.settings import Settings, load_settings
from tasks.base import Upstream
from tasks.context import ContextAgent

DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openrtb"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path, agent_retry_backoff_s=0)


@pytest.fixture
def agent(settings: Settings) -> ContextAgent:
    return ContextAgent(settings, fakeredis.FakeRedis())


def _request(request_id: str, **overrides: object) -> AdRequest:
    data: dict = {
        "request_id": request_id,
        "timestamp": "2024-07-04T16:45:00Z",  # a Thursday
        "slots": [{"slot_id": "s1", "position": 1}],
        "candidates": [{"ad_id": "a1", "campaign_id": "c1"}],
    }
    data.update(overrides)
    return AdRequest.model_validate(data)


def test_decide_reads_local_time_device_country_and_age(agent: ContextAgent) -> None:
    """A US desktop request gets New York time, its class, alpha-2 and age."""
    request = _request(
        "r1",
        device={"ua": DESKTOP},
        geo={"country": "usa"},
        user={"yob": 1990, "features": {"f": "v"}},
    )

    [out] = agent.decide([request], Upstream())

    assert (out.hour, out.weekday) == (12, 3)  # 16:45 UTC is 12:45 EDT
    assert (out.device_class, out.country, out.age, out.is_bot) == (
        "desktop",
        "US",
        34,
        False,
    )
    expected = encode_context([ContextFields(12, 3, "desktop", "US", 1, {"f": "v"})])
    assert out.vector == pytest.approx(expected[0].tolist())


def test_decide_uses_openrtb_devicetype_and_utcoffset(agent: ContextAgent) -> None:
    """devicetype 5 is a tablet and geo.utcoffset sets the local hour."""
    request = _request("r1", device={"device_type": 5}, geo={"utcoffset": 540})

    [out] = agent.decide([request], Upstream())

    assert (out.device_class, out.hour, out.weekday) == ("tablet", 1, 4)


def test_decide_flags_bots_and_keeps_batch_order(agent: ContextAgent) -> None:
    """Every request gets its own answer, in order; only the crawler is a bot."""
    batch = [
        _request("human", device={"ua": DESKTOP}),
        _request("crawler", device={"ua": GOOGLEBOT}),
        _request("unknown"),
    ]

    outs = agent.decide(batch, Upstream())

    assert [o.request_id for o in outs] == ["human", "crawler", "unknown"]
    assert [o.is_bot for o in outs] == [False, True, False]
    assert [o.device_class for o in outs] == ["desktop", "other", "unknown"]
    assert all(len(o.vector) == CONTEXT_DIM for o in outs)


def test_obd_style_request_encodes_utc_and_unknown_device(agent: ContextAgent) -> None:
    """With no device or geo (the OBD replay), hour and weekday are UTC."""
    request = _request("r1", user={"features": {"user_feature_0": "abc"}})

    [out] = agent.decide([request], Upstream())

    assert (out.hour, out.weekday, out.device_class, out.country) == (
        16,
        3,
        "unknown",
        None,
    )


def test_run_falls_back_to_marked_defaults(
    agent: ContextAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When reading fails, the result is marked and holds UTC defaults."""

    def broken(request: AdRequest) -> devices.RequestContext:
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(devices, "request_context", broken)
    request = _request(
        "r1", device={"ua": GOOGLEBOT}, geo={"country": "JP", "utcoffset": 540}
    )

    result = agent.run([request], Upstream())

    assert result["fallback"] is True
    assert "parser exploded" in result["fallback_reason"]
    [out] = result["outputs"]
    assert (out["hour"], out["device_class"], out["country"], out["is_bot"]) == (
        16,
        "unknown",
        None,
        False,
    )


def test_no_raw_identifiers_reach_the_logs(
    agent: ContextAgent, caplog: pytest.LogCaptureFixture
) -> None:
    """Logs of a batch (bots included) never carry user or device ids."""
    request = _request(
        "r1",
        user={"id": "user-secret-42"},
        device={"ua": GOOGLEBOT, "ifa": "ifa-secret-43"},
    )

    with caplog.at_level(logging.DEBUG):
        agent.run([request], Upstream())

    assert "bots" in caplog.text  # something was logged
    assert "user-secret-42" not in caplog.text
    assert "ifa-secret-43" not in caplog.text


def _openrtb_examples() -> list[tuple[str, AdRequest]]:
    found = []
    for path in sorted(FIXTURES.glob("*/*.json")):
        try:
            request = bid_request_to_ad_request(json.loads(path.read_text()))
        except RequestValidationError:
            continue  # the adapter's own tests cover the rejected ones
        found.append((path.name.split(".")[0], request))
    return found


OPENRTB_EXAMPLES = _openrtb_examples()


@pytest.mark.parametrize(
    "request_",
    [request for _, request in OPENRTB_EXAMPLES],
    ids=[name for name, _ in OPENRTB_EXAMPLES],
)
def test_every_openrtb_example_gets_a_context(
    agent: ContextAgent, request_: AdRequest
) -> None:
    """Real OpenRTB requests (spec examples, Prebid fixtures) decide without error."""
    [out] = agent.decide([request_], Upstream())

    assert out.device_class in DEVICE_CLASSES
    assert out.country is None or len(out.country) == 2
    assert len(out.vector) == CONTEXT_DIM
