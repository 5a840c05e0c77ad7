"""Tests of the signed weight store and the hot-swapping `ServingModel`.

Every store behaviour runs twice: on fakeredis (fast) and on the real Redis through
the `redis_url` fixture (marked integration), so fakeredis is never the only proof.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis
import torch
from prometheus_client import REGISTRY
from torch import nn

from ad_orchestrator.errors import WeightsError
from ad_orchestrator.settings import Settings, load_settings
from ad_orchestrator.weights import ServingModel, WeightStore
from rl.networks import ContentQNet


class TinyNet(nn.Module):
    """A small network with a schema, so tests stay fast."""

    INPUT_SCHEMA = "tiny/v1 in=3"

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)


class OtherNet(TinyNet):
    """The same tensors under another schema."""

    INPUT_SCHEMA = "tiny/v2 in=3"


def filled(value: float) -> dict[str, torch.Tensor]:
    """Return TinyNet tensors that all hold `value`, to tell versions apart."""
    return {
        "layer.weight": torch.full((2, 3), value),
        "layer.bias": torch.full((2,), value),
    }


META = {"input_schema": TinyNet.INPUT_SCHEMA, "data": "unit test"}


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings with a fixed HMAC key and a key prefix no other test uses."""
    return load_settings(
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        weights_hmac_key="k" * 32,
        state_dir=tmp_path,
    )


@pytest.fixture(
    params=["fakeredis", pytest.param("redis", marks=pytest.mark.integration)]
)
def client(request) -> Iterator[redis.Redis]:
    """A bytes-returning client on fakeredis or on the real Redis."""
    if request.param == "fakeredis":
        conn = fakeredis.FakeRedis()
    else:
        conn = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield conn
    conn.close()


@pytest.fixture
def store(client, settings) -> WeightStore:
    """A store keeping the newest 3 versions."""
    return WeightStore(client, settings, keep=3)


# Publishing and loading ------------------------------------------------------------


def test_roundtrip_returns_the_same_tensors_and_full_metadata(store):
    """What is published loads back bit for bit, with the store's metadata added."""
    net = ContentQNet(hidden=8)
    meta = {"input_schema": ContentQNet.INPUT_SCHEMA, "ope": {"dr": 0.0042}}

    version = store.publish("content", net.state_dict(), meta)
    tensors, loaded = store.load("content", version, ContentQNet.INPUT_SCHEMA)

    assert version == 1
    assert tensors.keys() == net.state_dict().keys()
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensors[name], tensor)
    assert loaded["agent"] == "content"
    assert loaded["version"] == 1
    assert loaded["ope"] == {"dr": 0.0042}
    assert loaded["input_schema"] == ContentQNet.INPUT_SCHEMA
    assert loaded["created"] <= time.time()


def test_versions_increment_per_agent(store):
    """Each agent counts its own versions from 1."""
    first = [store.publish("content", filled(i), META) for i in range(3)]
    other = store.publish("budget", filled(9), META)

    assert first == [1, 2, 3]
    assert other == 1


def test_concurrent_publishers_never_share_a_version(client, settings):
    """Versions come from INCR, so parallel trainers get distinct numbers."""
    store = WeightStore(client, settings, keep=50)
    got: list[int] = []

    def publish() -> None:
        got.append(store.publish("content", filled(1.0), META))

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(got) == list(range(1, 9))


# Refusals --------------------------------------------------------------------------


def test_tampered_bytes_are_refused(store, client):
    """Changing one byte of the blob breaks the HMAC."""
    version = store.publish("content", filled(1.0), META)
    key = store.blob_key("content", version)
    blob = bytearray(client.get(key))
    blob[-1] ^= 0x01
    client.set(key, bytes(blob))

    with pytest.raises(WeightsError, match="fail their HMAC"):
        store.load("content", version, TinyNet.INPUT_SCHEMA)


def test_tampered_metadata_is_refused(store, client, settings):
    """Changing a metadata field (here the OPE figure) breaks the HMAC too."""
    version = store.publish("content", filled(1.0), {**META, "ope": {"dr": 0.001}})
    key = settings.key("weights", "content", str(version), "meta")
    meta = json.loads(client.get(key))
    meta["ope"]["dr"] = 0.9
    client.set(key, json.dumps(meta))

    with pytest.raises(WeightsError, match="fail their HMAC"):
        store.load("content", version, TinyNet.INPUT_SCHEMA)


def test_blob_signed_with_another_key_is_refused(client, settings, tmp_path):
    """A store with a different HMAC key cannot make weights this one accepts."""
    intruder_settings = load_settings(
        key_prefix=settings.key_prefix,
        weights_hmac_key="x" * 32,
        state_dir=tmp_path,
    )
    intruder = WeightStore(client, intruder_settings)
    version = intruder.publish("content", filled(1.0), META)

    with pytest.raises(WeightsError, match="fail their HMAC"):
        WeightStore(client, settings).load("content", version, TinyNet.INPUT_SCHEMA)


def test_unsigned_blob_is_refused(store, client, settings):
    """Without its signature key a version never loads."""
    version = store.publish("content", filled(1.0), META)
    client.delete(settings.key("weights", "content", str(version), "hmac"))

    with pytest.raises(WeightsError, match="carry no signature"):
        store.load("content", version, TinyNet.INPUT_SCHEMA)


def test_blob_copied_to_another_version_is_refused(store, client, settings):
    """A correctly signed version replayed under another number is refused."""
    store.publish("content", filled(1.0), META)
    store.publish("content", filled(2.0), META)
    for suffix in ((), ("meta",), ("hmac",)):
        raw = client.get(settings.key("weights", "content", "1", *suffix))
        client.set(settings.key("weights", "content", "2", *suffix), raw)

    with pytest.raises(WeightsError, match="copied between keys"):
        store.load("content", 2, TinyNet.INPUT_SCHEMA)


def test_schema_mismatch_is_refused(store):
    """Weights trained for other inputs never load into the serving network."""
    version = store.publish("content", filled(1.0), META)

    with pytest.raises(WeightsError, match="trained for input schema 'tiny/v1 in=3'"):
        store.load("content", version, OtherNet.INPUT_SCHEMA)


def test_missing_version_is_refused(store):
    """Loading a version that was never stored names the key to look for."""
    with pytest.raises(WeightsError, match="missing from Redis"):
        store.load("content", 41, TinyNet.INPUT_SCHEMA)


@pytest.mark.parametrize(
    ("agent", "version", "message"),
    [
        ("Content", 1, "agent name must be"),
        ("", 1, "agent name must be"),
        ("events", 1, "agent name must be"),
        ("con:tent", 1, "agent name must be"),
        ("content", 0, "version must be a positive integer"),
        ("content", -3, "version must be a positive integer"),
        ("content", "2", "version must be a positive integer"),
        ("content", True, "version must be a positive integer"),
    ],
)
def test_bad_agent_or_version_is_refused(store, agent, version, message):
    """Names and numbers that could not be ours fail before touching Redis."""
    with pytest.raises(WeightsError, match=message):
        store.load(agent, version, TinyNet.INPUT_SCHEMA)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({}, "must name the network's input schema"),
        ({"input_schema": 3}, "must name the network's input schema"),
        ({**META, "loss": float("nan")}, "must be JSON-ready"),
        ({**META, "when": object()}, "must be JSON-ready"),
    ],
)
def test_publish_refuses_bad_metadata(store, metadata, message):
    """Metadata must carry the input schema and be plain JSON."""
    with pytest.raises(WeightsError, match=message):
        store.publish("content", filled(1.0), metadata)


def test_keep_must_be_positive(client, settings):
    """A store that would keep nothing is a configuration error."""
    with pytest.raises(WeightsError, match="keep must be at least 1"):
        WeightStore(client, settings, keep=0)


# Serving, events, rollback, retention ----------------------------------------------


def test_set_serving_moves_the_pointer_and_announces_it(store, client):
    """The pointer changes and one JSON message goes out on the events channel."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.events_channel)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    first = store.publish("content", filled(1.0), META)
    second = store.publish("content", filled(2.0), META)

    store.set_serving("content", first)
    store.set_serving("content", second)
    messages = []
    deadline = time.monotonic() + 5
    while len(messages) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message is not None:
            messages.append(json.loads(message["data"]))
    pubsub.close()

    assert store.serving_version("content") == second
    assert [(m["agent"], m["version"], m["previous"]) for m in messages] == [
        ("content", first, None),
        ("content", second, first),
    ]


def test_set_serving_refuses_a_tampered_version(store, client):
    """By default the pointer only moves to weights that verify."""
    version = store.publish("content", filled(1.0), META)
    client.append(store.blob_key("content", version), b"!")

    with pytest.raises(WeightsError, match="fail their HMAC"):
        store.set_serving("content", version)
    assert store.serving_version("content") is None


def test_set_serving_refuses_a_missing_version(store):
    """Even without verification the version must exist."""
    with pytest.raises(WeightsError, match="missing from Redis"):
        store.set_serving("content", 7, verify=False)


def test_rollback_returns_to_the_previously_serving_version(store):
    """Rollback walks the serving history, not merely the next lower number."""
    v1 = store.publish("content", filled(1.0), META)
    store.publish("content", filled(2.0), META)  # never served: gate refused it
    v3 = store.publish("content", filled(3.0), META)
    store.set_serving("content", v1)
    store.set_serving("content", v3)

    back = store.rollback("content")

    assert back == v1
    assert store.serving_version("content") == v1


def test_rollback_to_a_named_version(store):
    """`to_version` serves that version whatever served before."""
    versions = [store.publish("content", filled(i), META) for i in range(3)]
    store.set_serving("content", versions[-1])

    assert store.rollback("content", to_version=versions[1]) == versions[1]
    assert store.serving_version("content") == versions[1]


def test_rollback_without_anything_serving_is_refused(store):
    """Nothing serves, so there is nothing to go back from."""
    store.publish("content", filled(1.0), META)

    with pytest.raises(WeightsError, match="serves no version"):
        store.rollback("content")


def test_rollback_without_an_earlier_version_is_refused(store):
    """The first version has nothing before it."""
    version = store.publish("content", filled(1.0), META)
    store.set_serving("content", version)

    with pytest.raises(WeightsError, match="no stored version that served before"):
        store.rollback("content")


def test_retention_keeps_the_newest_versions(store):
    """With keep=3, publishing five versions leaves 3, 4 and 5."""
    for i in range(5):
        store.publish("content", filled(i), META)

    kept = [info.version for info in store.list_versions("content")]

    assert kept == [3, 4, 5]
    with pytest.raises(WeightsError, match="missing from Redis"):
        store.load("content", 1, TinyNet.INPUT_SCHEMA)


def test_retention_never_deletes_the_serving_version(store):
    """The serving version survives pruning however old it gets."""
    first = store.publish("content", filled(0.5), META)
    store.set_serving("content", first)
    for i in range(5):
        store.publish("content", filled(i), META)

    infos = store.list_versions("content")

    assert [info.version for info in infos] == [1, 4, 5, 6]
    assert [info.serving for info in infos] == [True, False, False, False]
    tensors, _ = store.load("content", first, TinyNet.INPUT_SCHEMA)
    assert torch.equal(tensors["layer.bias"], torch.full((2,), 0.5))


def test_update_metadata_resigns_so_the_version_still_loads(store):
    """Adding the promotion decision later keeps the version valid."""
    version = store.publish("content", filled(1.0), META)

    store.update_metadata("content", version, {"promotion": {"promoted": True}})
    _, meta = store.load("content", version, TinyNet.INPUT_SCHEMA)

    assert meta["promotion"] == {"promoted": True}


def test_update_metadata_refuses_store_fields(store):
    """The agent, version and digest are the store's to set."""
    version = store.publish("content", filled(1.0), META)

    with pytest.raises(WeightsError, match="set by the store"):
        store.update_metadata("content", version, {"version": 9})


# ServingModel -------------------------------------------------------------------


def gauge(agent: str) -> float | None:
    """Return the weights-version gauge of an agent."""
    return REGISTRY.get_sample_value("adorch_weights_version", {"agent": agent})


def test_serving_model_starts_untrained_when_nothing_serves(store):
    """Before any promotion the factory's module serves, with version None."""
    served = ServingModel(store, "content", TinyNet)

    module, version = served.load_now()

    assert isinstance(module, TinyNet)
    assert version is None
    assert gauge("content") == 0


def test_serving_model_swaps_in_a_new_module_between_tasks(store):
    """A promotion yields a new module; the one a task holds is left untouched."""
    clock = FakeClock()
    store.set_serving("content", store.publish("content", filled(1.0), META))
    served = ServingModel(store, "content", TinyNet, check_every_s=0.5, clock=clock)
    held, held_version = served.load_now()

    store.set_serving("content", store.publish("content", filled(2.0), META))
    before_check, _ = served.current()
    clock.now += 0.6
    swapped, swapped_version = served.current()

    assert held_version == "1"
    assert before_check is held
    assert swapped_version == "2"
    assert swapped is not held
    assert torch.equal(held.layer.bias, torch.full((2,), 1.0))
    assert torch.equal(swapped.layer.bias, torch.full((2,), 2.0))
    assert not swapped.training
    assert gauge("content") == 2


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("bytes", "fail their HMAC"),
        ("schema", "trained for input schema"),
        ("missing", "missing from Redis"),
        ("shape", "do not fit TinyNet"),
    ],
)
def test_serving_model_keeps_the_old_version_on_a_bad_blob(
    store, client, caplog, spoil, message
):
    """A bad new version is refused with an ERROR and the old one keeps serving."""
    clock = FakeClock()
    store.set_serving("content", store.publish("content", filled(1.0), META))
    served = ServingModel(store, "content", TinyNet, clock=clock)
    good, _ = served.load_now()
    if spoil == "schema":
        bad = store.publish("content", filled(2.0), {"input_schema": "tiny/v0"})
    elif spoil == "shape":
        bad = store.publish("content", {"layer.weight": torch.ones(4, 3)}, META)
    else:
        bad = store.publish("content", filled(2.0), META)
    store.set_serving("content", bad)
    if spoil == "bytes":
        client.append(store.blob_key("content", bad), b"\x00")
    elif spoil == "missing":
        client.delete(store.blob_key("content", bad))

    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="ad_orchestrator.weights"):
        module, version = served.current()
        clock.now += 1
        served.current()

    assert module is good
    assert version == "1"
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1  # once per bad version, not once per check
    assert message in refusals[0].getMessage()


def test_serving_model_serves_untrained_when_the_first_blob_is_bad(store, client):
    """With nothing loaded before, a bad blob leaves the untrained module."""
    version = store.publish("content", filled(1.0), META)
    store.set_serving("content", version)
    client.append(store.blob_key("content", version), b"\x00")

    module, served_version = ServingModel(store, "content", TinyNet).load_now()

    assert served_version is None
    assert isinstance(module, TinyNet)


def test_serving_model_follows_a_rollback(store):
    """Rolling back the pointer brings the earlier weights back."""
    clock = FakeClock()
    store.set_serving("content", store.publish("content", filled(1.0), META))
    served = ServingModel(store, "content", TinyNet, clock=clock)
    served.load_now()
    store.set_serving("content", store.publish("content", filled(2.0), META))
    clock.now += 1
    served.current()

    store.rollback("content")
    clock.now += 1
    module, version = served.current()

    assert version == "1"
    assert torch.equal(module.layer.bias, torch.full((2,), 1.0))


def test_serving_model_reads_the_pointer_at_most_every_interval(store, client):
    """Between checks `current()` does not touch Redis at all."""
    clock = FakeClock()
    served = ServingModel(store, "content", TinyNet, check_every_s=5, clock=clock)
    served.load_now()
    calls = []
    original = store.serving_version

    def counting(agent: str) -> int | None:
        calls.append(agent)
        return original(agent)

    store.serving_version = counting  # type: ignore[method-assign]
    for _ in range(10):
        served.current()
    clock.now += 5
    served.current()

    assert calls == ["content"]


def test_serving_model_requires_an_input_schema(store):
    """A network without INPUT_SCHEMA cannot be checked, so it is refused."""
    with pytest.raises(WeightsError, match="declares no INPUT_SCHEMA"):
        ServingModel(store, "content", lambda: nn.Linear(2, 2)).load_now()


@pytest.mark.integration
def test_serving_model_listener_swaps_on_announcement(redis_url, settings):
    """With `listen`, an announcement triggers the check before the interval."""
    store = WeightStore(redis.Redis.from_url(redis_url), settings)
    clock = FakeClock()  # frozen: only the announcement can cause a check
    served = ServingModel(
        store, "content", TinyNet, check_every_s=3600, listen=True, clock=clock
    )
    served.load_now()
    time.sleep(0.2)  # let the listener subscribe before the announcement

    store.set_serving("content", store.publish("content", filled(3.0), META))
    deadline = time.monotonic() + 5
    version = None
    while version is None and time.monotonic() < deadline:
        _, version = served.current()
        time.sleep(0.02)

    assert version == "1"
