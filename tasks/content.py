"""The Content agent: what each candidate ad is, and how well it fits the request.

Per batch it does three things:

1. Encodes each request's context (`devices.request_context`, the same reading the
   Context agent and the trainer use) and each candidate's own features
   (`features.encode_ads`, with the user's affinity for the ad in the last column).
   Ad encodings are cached per ad, since the same ads recur across requests.
2. Scores every (request, ad) pair with the served `ContentQNet` in one forward pass
   over the whole batch, candidates padded to the longest list. It scores twice in
   that pass: `relevance` with the user's features and affinities (personalised)
   and `contextual` with both zeroed (once per distinct request, since without
   user data many requests look alike). Content runs before Policy, so it cannot know
   whether consent allows personalisation; the reducer picks the score Policy allows.
3. For creatives with text (title, body, landing page), fills `topics` (IAB Content
   Taxonomy 3.1), `sentiment` (VADER) and `brand_safety` through
   `creatives.CreativeAnalyzer`, cached in Redis so each creative is analysed once.
   Item-feature creatives (the Open Bandit Dataset) have no text and skip this.

The model comes from the weight store through `weights.ServingModel`, checked at the
start of every batch, so a promoted version serves from the next batch on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis
import torch
from torch import nn

from ad_orchestrator import devices
from ad_orchestrator.creatives import CreativeAnalysis, CreativeAnalyzer, has_text
from ad_orchestrator.features import (
    AD_DIM,
    CONTEXT_DIM,
    USER_BUCKETS,
    encode_ads,
    encode_context,
)
from ad_orchestrator.schemas import AdRequest, CandidateAd, ContentOutput, TopicScore
from ad_orchestrator.settings import Settings
from ad_orchestrator.weights import ServingModel, WeightStore
from rl.networks import CONTENT_HIDDEN, ContentQNet
from rl.trainer import no_preference_model
from tasks.base import Agent, Upstream

log = logging.getLogger(__name__)

# The user's features fill the last USER_BUCKETS columns of the context encoding
# (`features.encode_context`); zeroing them gives the request's contextual encoding.
USER_COLUMNS = slice(CONTEXT_DIM - USER_BUCKETS, CONTEXT_DIM)
AFFINITY_COLUMN = AD_DIM - 1
AD_CACHE_SIZE = 100_000
TOPICS_PER_AD = 5

MSG_ANALYSIS_FAILED = "content: creative analysis failed, scores kept: %s"
MSG_WARM_UP_FAILED = "content: loading the sentence model early failed: %s"


class AdEncodingCache:
    """Encodings of ads' own features (affinity column 0), one row per ad id.

    Rows live in one growing array, so a batch gathers its candidates with a single
    fancy index instead of stacking thousands of small arrays. A hit needs the
    same ad id with equal features (one C-level dict comparison), so an ad whose
    features change is encoded again.
    """

    def __init__(self, max_size: int = AD_CACHE_SIZE) -> None:
        self.max_size = max_size
        self._index: dict[str, tuple[Mapping[str, str | float], int]] = {}
        self._table = np.zeros((64, AD_DIM), dtype=np.float32)
        self._used = 0

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, ads: Sequence[CandidateAd]) -> np.ndarray:
        """Return the row of each ad in the table, encoding unseen ads first."""
        rows = self._lookup(ads)
        missing = [i for i, row in enumerate(rows) if row < 0]
        if missing:
            if self._used + len(missing) > self.max_size:
                self._index.clear()  # rare: the ad set turned over completely
                self._used = 0
                missing = list(range(len(ads)))
            # Repeated ads within one batch: encode each ad id once.
            unique = {ads[i].ad_id: ads[i] for i in missing}
            start, needed = self._used, self._used + len(unique)
            if needed > len(self._table):
                grown = np.zeros((max(needed, 2 * len(self._table)), AD_DIM), "f4")
                grown[:start] = self._table[:start]
                self._table = grown
            self._table[start:needed] = encode_ads(
                [ad.features for ad in unique.values()]
            )
            for row, ad in enumerate(unique.values(), start):
                self._index[ad.ad_id] = (ad.features, row)
            self._used = needed
            rows = self._lookup(ads)
        return np.asarray(rows, dtype=np.int64)

    def _lookup(self, ads: Sequence[CandidateAd]) -> list[int]:
        index = self._index
        rows = []
        for ad in ads:
            found = index.get(ad.ad_id)
            if found is not None and found[0] == ad.features:
                rows.append(found[1])
            else:
                rows.append(-1)
        return rows

    def table(self) -> np.ndarray:
        """Return the encodings, `(n_rows, AD_DIM)`, indexed by `rows`."""
        return self._table


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """A batch as the model reads it, candidates padded to the longest list.

    Attributes:
        context: `(batch, CONTEXT_DIM)` request encodings.
        ads: `(batch, n_max, AD_DIM)` candidate encodings with the user's
            affinities; padding rows are zero.
        mask: `(batch, n_max)` True for real candidates.
        ad_rows: `(batch, n_max)` each candidate's row in the ad cache (-1:
            padding); equal rows mean equal ad features.
    """

    context: np.ndarray
    ads: np.ndarray
    mask: np.ndarray
    ad_rows: np.ndarray


def encode_batch(
    requests: Sequence[AdRequest],
    contexts: Sequence[devices.RequestContext],
    cache: AdEncodingCache,
) -> EncodedBatch:
    """Encode a batch for the model (see `EncodedBatch`)."""
    context = encode_context([ctx.fields for ctx in contexts])
    counts = np.fromiter((len(r.candidates) for r in requests), np.int64, len(requests))
    n_max = int(counts.max()) if len(requests) else 0
    mask = np.arange(n_max)[None, :] < counts[:, None]
    flat = [ad for request in requests for ad in request.candidates]
    rows = cache.rows(flat)
    ad_rows = np.full((len(requests), n_max), -1, dtype=np.int64)
    ad_rows[mask] = rows
    ads = np.zeros((len(requests), n_max, AD_DIM), dtype=np.float32)
    ads[mask] = cache.table()[rows]
    for i, request in enumerate(requests):
        # Most users have no affinities at all: skip their candidates entirely.
        affinity = request.user.item_affinity
        if affinity:
            for j, ad in enumerate(request.candidates):
                ads[i, j, AFFINITY_COLUMN] = affinity.get(ad.ad_id, 0.0)
    return EncodedBatch(context, ads, mask, ad_rows)


def score_batch(model: nn.Module, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
    """Score every (request, ad) pair with and without the user's data.

    Without the user's features and affinities, many requests of a batch look
    the same (same hour, position and candidates), so the contextual view is
    scored once per distinct request; both views share one forward pass.

    Returns:
        Personalised and contextual scores, each `(batch, n_max)`.
    """
    plain_context = batch.context.copy()
    plain_context[:, USER_COLUMNS] = 0.0
    distinct: dict[bytes, int] = {}
    inverse = np.fromiter(
        (
            distinct.setdefault(ctx.tobytes() + rows.tobytes(), len(distinct))
            for ctx, rows in zip(plain_context, batch.ad_rows, strict=True)
        ),
        np.int64,
        len(plain_context),
    )
    firsts = np.unique(inverse, return_index=True)[1]
    plain_ads = batch.ads[firsts]
    plain_ads[:, :, AFFINITY_COLUMN] = 0.0
    both_context = np.concatenate([batch.context, plain_context[firsts]])
    both_ads = np.concatenate([batch.ads, plain_ads])
    with torch.inference_mode():
        q = model(torch.from_numpy(both_context), torch.from_numpy(both_ads)).numpy()
    half = len(batch.context)
    return q[:half], q[half:][inverse]


def untrained_model(seed: int = 0) -> ContentQNet:
    """Return the model served until the trainer publishes weights.

    It scores every ad the same (its last layer is zero), so the reducer serves the
    allowed ads uniformly: before anything is learned, the service explores like
    the random policy the Open Bandit logs come from, instead of ranking ads by an
    arbitrary random network (which off-policy evaluation shows does worse). The
    other layers are seeded (without touching the global random state), so every
    worker holds the same module.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return no_preference_model(hidden=CONTENT_HIDDEN)


def _bytes_client(client: redis.Redis) -> redis.Redis:
    # The weight store reads binary blobs, so it needs a client that does not
    # decode responses; build one on the same server when ours does.
    kwargs = client.connection_pool.connection_kwargs
    if not kwargs.get("decode_responses"):
        return client
    return redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=client.connection_pool.connection_class,
            **{**kwargs, "decode_responses": False},
        )
    )


class ContentAgent(Agent[ContentOutput]):
    """Relevance of every candidate ad, and what text creatives are about.

    Args:
        settings: The service settings.
        client: Redis for the weight store and the creative-analysis cache.
        model_source: Returns `(module, version)` for the next batch; defaults to a
            `ServingModel` over the weight store (tests pass their own).
        analyzer: Creative understanding; defaults to one on `client`. With the
            setting `creative_preload` on, its model loads in the background at
            start.
    """

    name = "content"

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        model_source: Callable[[], tuple[nn.Module, str | None]] | None = None,
        analyzer: CreativeAnalyzer | None = None,
    ) -> None:
        super().__init__(settings, client)
        devices.warm_up()
        if model_source is None:
            serving = ServingModel(
                WeightStore(_bytes_client(client), settings), self.name, untrained_model
            )
            model_source = serving.current
        self._model_source = model_source
        self._version: str | None = None
        self.ads = AdEncodingCache()
        self.analyzer = analyzer or CreativeAnalyzer(settings, client)
        if getattr(settings, "creative_preload", False):
            # Text creatives expected: load the sentence model while the first
            # batches are scored, instead of inside the first one that needs it.
            threading.Thread(
                target=self._warm_up, name="creative-warm-up", daemon=True
            ).start()

    def _warm_up(self) -> None:
        try:
            self.analyzer.warm_up()
        except Exception as error:  # noqa: BLE001 - decide() retries the load
            log.warning(MSG_WARM_UP_FAILED, f"{type(error).__name__}: {error}")

    def weights_version(self) -> str | None:
        """Return the version of the model that scored the last batch."""
        return self._version

    def warm_up(self) -> None:
        """Load the serving weights now, not inside the first batch."""
        _, self._version = self._model_source()

    def decide(
        self, requests: Sequence[AdRequest], upstream: Upstream
    ) -> list[ContentOutput]:
        """Score every candidate of every request, and understand text creatives."""
        model, self._version = self._model_source()
        contexts = [devices.request_context(request) for request in requests]
        batch = encode_batch(requests, contexts, self.ads)
        personal, contextual = score_batch(model, batch)
        analyses = self._analyse(requests)
        outputs = []
        for i, request in enumerate(requests):
            ids = [ad.ad_id for ad in request.candidates]
            n = len(ids)
            output = ContentOutput(
                request_id=request.request_id,
                relevance=dict(zip(ids, personal[i, :n].tolist(), strict=True)),
                contextual=dict(zip(ids, contextual[i, :n].tolist(), strict=True)),
            )
            _fill_understanding(output, request, analyses)
            outputs.append(output)
        return outputs

    def fallback(
        self, requests: Sequence[AdRequest], upstream: Upstream, reason: str
    ) -> list[ContentOutput]:
        """Answer with neutral scores (0.0 for every ad) and no understanding.

        The result is marked as a fallback by `Agent.run`, which calls this.
        """
        outputs = []
        for request in requests:
            neutral = {ad.ad_id: 0.0 for ad in request.candidates}
            outputs.append(
                ContentOutput(
                    request_id=request.request_id,
                    relevance=neutral,
                    contextual=dict(neutral),
                )
            )
        return outputs

    def _analyse(self, requests: Sequence[AdRequest]) -> dict[int, Understanding]:
        # Keyed by id() of each Creative object, valid for this batch only.
        creatives = [
            ad.creative
            for request in requests
            for ad in request.candidates
            if ad.creative is not None and has_text(ad.creative)
        ]
        if not creatives:
            return {}
        try:
            results = self.analyzer.analyse(creatives)
        except Exception as error:  # noqa: BLE001 - scores are worth more than topics
            log.warning(MSG_ANALYSIS_FAILED, f"{type(error).__name__}: {error}")
            return {}
        # The same few creatives recur across a batch: build each answer once.
        by_key: dict[str, Understanding] = {}
        found = {}
        for creative, result in zip(creatives, results, strict=True):
            if result is None:
                continue
            if result.key not in by_key:
                by_key[result.key] = Understanding.of(result)
            found[id(creative)] = by_key[result.key]
        return found


@dataclass(frozen=True, slots=True)
class Understanding:
    """What `ContentOutput` reports about one creative."""

    topics: tuple[TopicScore, ...]
    sentiment: float
    brand_safety: tuple[str, ...]

    @classmethod
    def of(cls, analysis: CreativeAnalysis) -> Understanding:
        """Keep the best `TOPICS_PER_AD` topics of an analysis."""
        topics = tuple(
            TopicScore(category=category, score=score)
            for category, score in analysis.topics[:TOPICS_PER_AD]
        )
        return cls(topics, analysis.sentiment, tuple(analysis.brand_safety))


def _fill_understanding(
    output: ContentOutput, request: AdRequest, analyses: dict[int, Understanding]
) -> None:
    if not analyses:
        return
    for ad in request.candidates:
        found = analyses.get(id(ad.creative)) if ad.creative is not None else None
        if found is None:
            continue
        output.topics[ad.ad_id] = list(found.topics)
        output.sentiment[ad.ad_id] = found.sentiment
        output.brand_safety[ad.ad_id] = list(found.brand_safety)


from ad_orchestrator.app import agent_task  # noqa: E402 - after the class

task = agent_task(ContentAgent)
