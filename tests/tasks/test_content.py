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
from rl.networks import ContentQNet
from tasks.base import Upstream
from tasks.content import AdEncodingCache, ContentAgent, encode_batch


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

    context, ads, mask = encode_batch(batch, contexts, AdEncodingCache())

    assert context.shape == (2, CONTEXT_DIM)
    assert ads.shape == (2, 4, AD_DIM)
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert not ads[0, 2:].any()
    expected = encode_ads([ad.features for ad in batch[1].candidates], [0, 0.9, 0, 0])
    np.testing.assert_array_equal(ads[1], expected)


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
