"""The Content agent (`tasks.content`): batched scoring, masking and fallbacks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import fakeredis
import numpy as np
import pytest
import torch

from ad_orchestrator import devices
from ad_orchestrator.creatives import CreativeAnalysis
from ad_orchestrator.features import AD_DIM, CONTEXT_DIM, encode_ads
from ad_orchestrator.schemas import AdRequest, Creative
from ad_orchestrator.settings import Settings, load_settings
from ad_orchestrator.weights import ServingModel, WeightStore
from rl.envs.obd import BanditLog, load_obd, row_to_request
from rl.networks import ContentQNet
from tasks.base import Upstream
from tasks.content import (
    USER_COLUMNS,
    AdEncodingCache,
    ContentAgent,
    encode_batch,
    score_batch,
    untrained_model,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path, agent_retry_backoff_s=0)


def _model() -> ContentQNet:
    torch.manual_seed(7)
    return ContentQNet().eval()


class FakeAnalyzer:
    """Stands in for creative understanding; records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []

    def analyse(self, creatives: Sequence[Creative]) -> list[CreativeAnalysis | None]:
        self.seen.extend(c.title for c in creatives)
        return [
            CreativeAnalysis(
                key=f"k{i}",
                topics=[("211", 0.5), ("210", 0.3)],
                sentiment=0.6,
                brand_safety=["pg0WhF"],
            )
            for i, _ in enumerate(creatives)
        ]


@pytest.fixture
def agent(settings: Settings) -> ContentAgent:
    model = _model()
    return ContentAgent(
        settings,
        fakeredis.FakeRedis(),
        model_source=lambda: (model, "3"),
        analyzer=FakeAnalyzer(),  # type: ignore[arg-type]
    )


def _ad(ad_id: str, **extra: object) -> dict:
    return {
        "ad_id": ad_id,
        "campaign_id": "c1",
        "features": {"price": float(len(ad_id)), "brand": f"b{ad_id}"},
        **extra,
    }


def _request(request_id: str, n_ads: int, **overrides: object) -> AdRequest:
    data: dict = {
        "request_id": request_id,
        "timestamp": "2024-07-04T16:45:00Z",
        "user": {
            "features": {"user_feature_0": "x", "user_feature_1": "y"},
            "item_affinity": {"a1": 0.9},
        },
        "slots": [{"slot_id": "s1", "position": 1}],
        "candidates": [_ad(f"a{i}") for i in range(n_ads)],
    }
    data.update(overrides)
    return AdRequest.model_validate(data)


def test_decide_scores_every_candidate_of_every_request(agent: ContentAgent) -> None:
    """Each request gets a score per own candidate, and only for those."""
    batch = [_request("r1", 3), _request("r2", 5), _request("r3", 1)]

    outs = agent.decide(batch, Upstream())

    assert [o.request_id for o in outs] == ["r1", "r2", "r3"]
    for out, n in zip(outs, (3, 5, 1), strict=True):
        ids = [f"a{i}" for i in range(n)]
        assert list(out.relevance) == ids
        assert list(out.contextual) == ids
        assert all(np.isfinite(list(out.relevance.values())))
    assert agent.weights_version() == "3"


def test_padding_does_not_change_scores(agent: ContentAgent) -> None:
    """A request scores the same alone as next to a longer, padded one."""
    short = _request("r1", 2)

    alone = agent.decide([short], Upstream())[0]
    padded = agent.decide([short, _request("r2", 9)], Upstream())[0]

    assert padded.relevance == pytest.approx(alone.relevance, abs=1e-6)
    assert padded.contextual == pytest.approx(alone.contextual, abs=1e-6)


def test_encode_batch_pads_and_masks(agent: ContentAgent) -> None:
    """Ads are `(batch, n_max, AD_DIM)`, padding is zero and masked out."""
    batch = [_request("r1", 2), _request("r2", 4)]
    contexts = [devices.request_context(r) for r in batch]

    encoded = encode_batch(batch, contexts, AdEncodingCache())
    context, ads, mask = encoded.context, encoded.ads, encoded.mask

    assert context.shape == (2, CONTEXT_DIM)
    assert ads.shape == (2, 4, AD_DIM)
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert encoded.ad_rows[0, 2:].tolist() == [-1, -1]
    assert encoded.ad_rows[0, :2].tolist() == encoded.ad_rows[1, :2].tolist()
    assert not ads[0, 2:].any()
    expected = encode_ads([ad.features for ad in batch[1].candidates], [0, 0.9, 0, 0])
    np.testing.assert_array_equal(ads[1], expected)


def test_ad_cache_encodes_each_ad_once_and_again_when_it_changes() -> None:
    """Same id and features: one row; changed features: a new, correct row."""
    cache = AdEncodingCache()
    first = _request("r1", 3).candidates
    changed = _request("r2", 0, candidates=[_ad("a1", features={"price": 9.0})])

    rows = cache.rows([*first, *first])
    changed_row = cache.rows(changed.candidates)

    assert rows.tolist() == [0, 1, 2, 0, 1, 2]
    assert len(cache) == 3
    np.testing.assert_array_equal(
        cache.table()[rows[:3]], encode_ads([ad.features for ad in first])
    )
    assert changed_row.tolist() == [3]
    np.testing.assert_array_equal(cache.table()[3], encode_ads([{"price": 9.0}])[0])


def test_score_batch_contextual_view_matches_scoring_each_request() -> None:
    """Scoring alike requests once gives what scoring each of them would."""
    model = _model()
    batch = [
        _request("r1", 3),
        _request("r2", 3, user={"features": {"user_feature_0": "other"}}),
        _request("r3", 5, timestamp="2024-07-05T01:00:00Z"),
        _request("r4", 3, slots=[{"slot_id": "s", "position": 3}]),
    ]
    encoded = encode_batch(
        batch, [devices.request_context(r) for r in batch], AdEncodingCache()
    )

    personal, contextual = score_batch(model, encoded)

    plain_context = encoded.context.copy()
    plain_context[:, USER_COLUMNS] = 0
    plain_ads = encoded.ads.copy()
    plain_ads[:, :, AD_DIM - 1] = 0
    with torch.inference_mode():
        expected_personal = model(
            torch.from_numpy(encoded.context), torch.from_numpy(encoded.ads)
        ).numpy()
        expected_plain = model(
            torch.from_numpy(plain_context), torch.from_numpy(plain_ads)
        ).numpy()
    np.testing.assert_allclose(personal, expected_personal, atol=1e-5)
    np.testing.assert_allclose(contextual, expected_plain, atol=1e-5)
    assert contextual[0] == pytest.approx(contextual[1])  # same but for the user


def test_contextual_score_ignores_user_data(agent: ContentAgent) -> None:
    """Other user features change `relevance` but never `contextual`."""
    first = _request("r1", 4)
    other_user = _request(
        "r1",
        4,
        user={"features": {"user_feature_0": "zzz"}, "item_affinity": {"a2": 5.0}},
    )

    a, b = agent.decide([first, other_user], Upstream())

    assert a.contextual == pytest.approx(b.contextual, abs=1e-6)
    assert a.relevance != pytest.approx(b.relevance, abs=1e-6)


def test_text_creatives_get_topics_sentiment_and_safety(agent: ContentAgent) -> None:
    """Only creatives with text are analysed; their results land per ad."""
    request = _request(
        "r1",
        0,
        candidates=[
            _ad("beer", creative={"title": "Cold lager"}),
            _ad("item"),
            _ad("blank", creative={}),
        ],
    )

    [out] = agent.decide([request], Upstream())

    assert agent.analyzer.seen == ["Cold lager"]  # type: ignore[attr-defined]
    assert [t.category for t in out.topics["beer"]] == ["211", "210"]
    assert out.sentiment == {"beer": 0.6}
    assert out.brand_safety == {"beer": ["pg0WhF"]}
    assert set(out.relevance) == {"beer", "item", "blank"}


def test_run_falls_back_to_marked_neutral_scores(settings: Settings) -> None:
    """When the model cannot score, every ad gets 0.0 and the result is marked."""

    def broken() -> tuple[torch.nn.Module, str | None]:
        raise RuntimeError("no model")

    agent = ContentAgent(
        settings,
        fakeredis.FakeRedis(),
        model_source=broken,
        analyzer=FakeAnalyzer(),  # type: ignore[arg-type]
    )

    result = agent.run([_request("r1", 3)], Upstream())

    assert result["fallback"] is True
    assert "no model" in result["fallback_reason"]
    [out] = result["outputs"]
    assert out["relevance"] == {"a0": 0.0, "a1": 0.0, "a2": 0.0}
    assert out["contextual"] == out["relevance"]


def test_default_model_source_serves_untrained_net_without_weights(
    settings: Settings,
) -> None:
    """With no weights published, the agent scores with an untrained ContentQNet."""
    agent = ContentAgent(settings, fakeredis.FakeRedis(), analyzer=FakeAnalyzer())  # type: ignore[arg-type]

    [out] = agent.decide([_request("r1", 3)], Upstream())

    assert len(out.relevance) == 3
    assert agent.weights_version() is None


@pytest.fixture(scope="module")
def obd_log() -> BanditLog:
    return load_obd("random", "all")


def test_obd_rows_encode_as_the_trainer_encodes_them(obd_log: BanditLog) -> None:
    """A replayed OBD request gives Content the trainer's exact model inputs.

    The trainer (`rl.envs.obd`) encodes rows straight from the log; the agent
    encodes the `AdRequest` the replay builds from the same row. Any difference
    would mean the served network reads other columns than it was trained on.
    """
    with_affinity = np.flatnonzero(obd_log.affinity.any(axis=1))
    rows = np.unique(np.r_[0, 1, obd_log.n_rounds - 1, with_affinity[:20]])
    requests = [
        AdRequest.model_validate(row_to_request(obd_log, int(i), "obd-all"))
        for i in rows
    ]
    contexts = [devices.request_context(r) for r in requests]

    encoded = encode_batch(requests, contexts, AdEncodingCache())

    assert len(with_affinity) > 0
    assert encoded.mask.all()
    np.testing.assert_array_equal(encoded.context, obd_log.contexts[rows])
    np.testing.assert_array_equal(encoded.ads, obd_log.ads(rows))


def test_published_weights_serve_from_the_next_batch(settings: Settings) -> None:
    """Promoting a version swaps the model between batches and reports it."""
    client = fakeredis.FakeRedis()
    store = WeightStore(client, settings)
    serving = ServingModel(store, "content", untrained_model, check_every_s=0.0)
    agent = ContentAgent(
        settings,
        client,
        model_source=serving.current,
        analyzer=FakeAnalyzer(),  # type: ignore[arg-type]
    )
    request = _request("r1", 3)
    before = agent.decide([request], Upstream())[0].relevance
    trained = ContentQNet().state_dict()
    last = max(name.rsplit(".", 1)[0] for name in trained if name.startswith("head."))
    trained[f"{last}.weight"].zero_()
    trained[f"{last}.bias"].fill_(5.0)  # every ad scores 5.0
    version = store.publish(
        "content", trained, {"input_schema": ContentQNet.INPUT_SCHEMA}
    )
    store.set_serving("content", version)

    after = agent.decide([request], Upstream())[0].relevance

    assert agent.weights_version() == str(version)
    assert after == pytest.approx({"a0": 5.0, "a1": 5.0, "a2": 5.0})
    assert before != pytest.approx(after)


def test_untrained_model_is_the_same_in_every_process() -> None:
    """Before any weights exist, every worker serves identical (seeded) weights."""
    first, second = untrained_model(), untrained_model()
    state = torch.get_rng_state()

    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    untrained_model()
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched
