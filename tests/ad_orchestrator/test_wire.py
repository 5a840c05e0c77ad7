"""The wire codec carries our schemas as themselves and refuses anything else."""

from __future__ import annotations

import msgpack
import pytest

from ad_orchestrator import wire
from ad_orchestrator.schemas import Decision


def test_a_decision_comes_back_as_a_decision() -> None:
    """`.get()` on a decision task hands back the model, not a dict."""
    decision = Decision(request_id="r", outcome="bid", ad_id="a", bid_cpm=1.5)

    back = wire.loads(wire.dumps({"decisions": [decision]}))

    assert back["decisions"] == [decision]
    assert isinstance(back["decisions"][0], Decision)


def test_an_unknown_model_name_is_refused() -> None:
    """Only listed models can be rebuilt from the wire."""
    body = msgpack.packb(["Settings", {"redis_url": "x"}])
    forged = msgpack.packb(msgpack.ExtType(42, body))

    with pytest.raises(ValueError, match="not allowed"):
        wire.loads(forged)


def test_arbitrary_objects_cannot_be_sent() -> None:
    """There is no pickle fallback for unknown types."""
    with pytest.raises(TypeError, match="cannot put object"):
        wire.dumps({"x": object()})
