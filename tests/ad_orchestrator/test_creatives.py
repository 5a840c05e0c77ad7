"""Creative understanding (`ad_orchestrator.creatives`): text, topics, cache, fetch."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fakeredis
import numpy as np
import pytest
import redis

from ad_orchestrator.creatives import (
    FETCH_PENDING,
    KEYWORD_SCORE,
    CreativeAnalysis,
    CreativeAnalyzer,
    CreativeConfig,
    FetchError,
    creative_key,
    default_embedder,
    extract_text,
    fetch_page,
    has_text,
    load_categories,
    read_cache_stats,
    sentiment,
)
from ad_orchestrator.errors import ConfigError
from ad_orchestrator.schemas import Creative
from ad_orchestrator.settings import Settings, load_settings

LOCAL = CreativeConfig(fetch_allow_private=True, fetch_timeout_s=2.0, fetch_wait_s=2.0)
PAGE = """<html><head><title>Summer Lager</title><script>var track = 1;</script>
</head><body><nav>Home | Shop | Cart</nav><article><h1>Our summer lager</h1>
<p>Brewed with local hops and malted barley, our crisp golden lager is the beer
for long evenings with friends.</p><p>Enjoy it ice cold, and drink responsibly.
</p></article><footer>Copyright</footer></body></html>"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(state_dir=tmp_path)


class CountingEmbedder:
    """Deterministic fake embeddings (from a hash of each text); counts its calls."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
            row = np.random.default_rng(seed).normal(size=16)
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32)


# Pieces -----------------------------------------------------------------------------


def test_load_categories_reads_the_iab_file() -> None:
    """All 704 Content 3.1 categories load, with tier paths and sensitive topics."""
    categories = {c.id: c for c in load_categories()}

    assert len(categories) == 704
    assert categories["211"].text == "Alcoholic Beverages (Food & Drink)"
    assert categories["1"].text == "Automotive"
    assert categories["pg0WhF"].path[0] == "Sensitive Topics"


def test_extract_text_keeps_the_article_and_drops_scripts() -> None:
    """Main text comes out; script code does not."""
    text = extract_text(PAGE)

    assert "crisp golden lager" in text
    assert "var track" not in text


@pytest.mark.parametrize(
    ("text", "sign"),
    [
        ("Amazing deals! You will love our wonderful, delicious coffee.", 1),
        ("Terrible service, awful food, I hate it and feel miserable.", -1),
    ],
)
def test_sentiment_sign(text: str, sign: int) -> None:
    """VADER's compound score has the sign of clearly positive or negative copy."""
    assert np.sign(sentiment(text)) == sign


def test_creative_key_normalises_whitespace_but_not_content() -> None:
    """Whitespace does not change the key; text or URL does."""
    base = creative_key(Creative(title="Cold  beer", landing_url="https://a.example"))

    assert base == creative_key(
        Creative(title=" Cold beer\n", landing_url="https://a.example")
    )
    assert base != creative_key(Creative(title="Cold beer"))
    assert base != creative_key(
        Creative(title="Cold beers", landing_url="https://a.example")
    )


@pytest.mark.parametrize(
    ("creative", "expected"),
    [
        (Creative(), False),
        (Creative(title="x"), True),
        (Creative(landing_url="https://a.example"), True),
    ],
)
def test_has_text(creative: Creative, expected: bool) -> None:
    """Item-feature creatives (no title, body, HTML or URL) have no text."""
    assert has_text(creative) is expected


@pytest.mark.parametrize(
    "raw",
    [
        '{"v": "creative/v0", "key": "k"}',
        "not json",
        '{"v": "creative/v1"}',
    ],
)
def test_cached_analysis_from_other_versions_or_broken_is_ignored(raw: str) -> None:
    """A cached value that does not fit is treated as a miss, never trusted."""
    assert CreativeAnalysis.from_json(raw) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fetch_timeout_s": 0}, "`fetch_timeout_s` must be a positive number"),
        ({"fetch_max_bytes": -1}, "`fetch_max_bytes` must be a positive number"),
        ({"cache_ttl_s": "long"}, "`cache_ttl_s` must be a positive number"),
        ({"top_k": 0}, "ADORCH_CREATIVE_TOP_K"),
    ],
)
def test_config_rejects_bad_values(overrides: dict, message: str) -> None:
    """Non-positive or non-numeric settings are refused, naming the setting."""
    with pytest.raises(ConfigError, match=message):
        CreativeConfig(**overrides)


# Analysis and cache ------------------------------------------------------------------


def test_each_unique_creative_is_analysed_once(settings: Settings) -> None:
    """Repeats within a batch and across batches hit the cache: one model read."""
    embedder = CountingEmbedder()
    analyzer = CreativeAnalyzer(settings, fakeredis.FakeRedis(), embedder=embedder)
    beer, car = Creative(title="Cold lager"), Creative(title="Hybrid sedan")

    first = analyzer.analyse([beer, beer, car, Creative()])
    second = analyzer.analyse([car, beer])

    creative_texts = [call for call in embedder.calls if len(call) < 100]
    assert creative_texts == [["Cold lager", "Hybrid sedan"]]
    assert analyzer.cache_stats() == {
        "hits": 3,
        "misses": 2,
        "analysed": 2,
        "hit_rate": 0.6,
    }
    assert first[3] is None
    assert first[0] == first[1] == second[1]
    assert second[0] == first[2]


def test_shared_counters_add_up_across_analyzers(settings: Settings) -> None:
    """Counters in Redis sum every analyzer's hits and misses (all workers)."""
    client = fakeredis.FakeRedis()
    beer, car = Creative(title="Cold lager"), Creative(title="Hybrid sedan")
    first = CreativeAnalyzer(settings, client, embedder=CountingEmbedder())
    second = CreativeAnalyzer(settings, client, embedder=CountingEmbedder())

    first.analyse([beer, beer])
    second.analyse([beer, car, Creative()])

    assert read_cache_stats(client, settings) == {
        "hits": 2,
        "misses": 2,
        "analysed": 2,
        "hit_rate": 0.5,
    }


def test_results_are_cached_as_json_with_a_ttl(settings: Settings) -> None:
    """The cache holds JSON (never pickle) under the creative hash, expiring."""
    client = fakeredis.FakeRedis()
    analyzer = CreativeAnalyzer(settings, client, embedder=CountingEmbedder())
    creative = Creative(title="Cold lager", body="Brewed for summer.")

    [result] = analyzer.analyse([creative])

    key = settings.key("creative", creative_key(creative))
    stored = json.loads(client.get(key))
    assert stored["key"] == result.key == creative_key(creative)
    assert 0 < client.ttl(key) <= CreativeConfig().cache_ttl_s


def test_a_second_analyzer_reads_the_first_ones_cache(settings: Settings) -> None:
    """Another worker process (another analyzer) reuses cached results."""
    client = fakeredis.FakeRedis()
    creative = Creative(title="Cold lager")
    CreativeAnalyzer(settings, client, embedder=CountingEmbedder()).analyse([creative])
    embedder = CountingEmbedder()
    other = CreativeAnalyzer(settings, client, embedder=embedder)

    other.analyse([creative])

    assert embedder.calls == []
    assert other.cache_stats()["hits"] == 1


def test_analysis_works_without_redis(settings: Settings) -> None:
    """With Redis down the creative is analysed anyway (and not cached)."""
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    analyzer = CreativeAnalyzer(settings, down, embedder=CountingEmbedder())

    [result] = analyzer.analyse([Creative(title="Cold lager")])

    assert result is not None and len(result.topics) == CreativeConfig().top_k


@pytest.mark.parametrize(
    ("title", "category"),
    [
        ("Cold lager, six-packs on sale", "211"),
        ("A fine Bordeaux WINE for dinner", "211"),
        ("Premium vape juice and e-cigarettes", "pg0WhF"),
        ("Play roulette at our online casino", "181"),
        ("Texas hold'em poker tonight", "524"),
        ("Win the lottery with scratch cards", "480"),
        ("Hunting rifles and ammunition", "avbNf2"),
    ],
)
def test_restricted_products_named_outright_score_high(
    settings: Settings, title: str, category: str
) -> None:
    """A word naming a restricted product puts its category at KEYWORD_SCORE."""
    analyzer = CreativeAnalyzer(settings, None, embedder=CountingEmbedder())

    [result] = analyzer.analyse([Creative(title=title)])

    assert result is not None
    assert (category, KEYWORD_SCORE) in result.topics


@pytest.mark.parametrize(
    "title",
    [
        "Sparkling lemonade, zero sugar",
        "Book time slots for your car service",
        "For the sake of your garden: compost",
        "Alesund ferry tickets",
    ],
)
def test_innocent_words_do_not_trip_the_keywords(
    settings: Settings, title: str
) -> None:
    """Look-alike words and innocent senses give no keyword score."""
    analyzer = CreativeAnalyzer(settings, None, embedder=CountingEmbedder())

    [result] = analyzer.analyse([Creative(title=title)])

    assert result is not None
    assert all(score < KEYWORD_SCORE for _, score in result.topics)


@pytest.fixture(scope="module")
def real_analyzer(tmp_path_factory: pytest.TempPathFactory) -> CreativeAnalyzer:
    settings = load_settings(state_dir=tmp_path_factory.mktemp("state"))
    return CreativeAnalyzer(settings, None, embedder=default_embedder())


def _ids_under(tier1: str) -> set[str]:
    return {c.id for c in load_categories() if c.path[0] == tier1}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("title", "body", "expected", "within"),
    [
        pytest.param(
            "Ice-cold and crisp",
            "Brewed with local hops and malted barley for summer barbecues.",
            {"211"},
            5,
            id="beer-without-keywords-alcoholic-beverages",
        ),
        pytest.param(
            "The all-new hybrid sedan",
            "50 mpg and a five-star safety rating. Book a test drive today.",
            _ids_under("Automotive"),
            1,
            id="car-automotive",
        ),
        pytest.param(
            "Beachfront hotel in Bali",
            "Book your holiday now and save 30% on ocean-view rooms.",
            _ids_under("Travel"),
            3,
            id="hotel-travel",
        ),
    ],
)
def test_taxonomy_top_categories_make_sense(
    real_analyzer: CreativeAnalyzer,
    title: str,
    body: str,
    expected: set[str],
    within: int,
) -> None:
    """The packaged MiniLM puts a fitting IAB category among the top few."""
    [result] = real_analyzer.analyse([Creative(title=title, body=body)])

    assert result is not None
    top = [category for category, _ in result.topics[:within]]
    assert expected & set(top), top


@pytest.mark.slow
@pytest.mark.parametrize(
    ("title", "flag"),
    [
        ("Ice-cold craft beer and lager, six-packs on sale", "pg0WhF"),
        ("Buy handguns, rifles and ammunition online", "avbNf2"),
        ("Beachfront hotel in Bali, book your holiday now", None),
    ],
)
def test_brand_safety_flags(
    real_analyzer: CreativeAnalyzer, title: str, flag: str | None
) -> None:
    """Alcohol and weapons raise their Sensitive Topics flag; a hotel raises none."""
    [result] = real_analyzer.analyse([Creative(title=title)])

    assert result is not None
    if flag is None:
        assert result.brand_safety == []
    else:
        assert flag in result.brand_safety


# Landing pages ----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.startswith("/slow"):
            time.sleep(3)
        if self.path == "/redirect-out":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        if self.path == "/missing":
            self.send_error(404)
            return
        body = ("x" * 5000).encode() if self.path == "/big" else PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_reads_a_local_page_when_allowed(server: str) -> None:
    """With private addresses allowed (tests only), the page comes back."""
    assert "golden lager" in fetch_page(f"{server}/page", LOCAL)


def test_fetch_stops_at_the_size_limit(server: str) -> None:
    """No more than `fetch_max_bytes` are read."""
    config = CreativeConfig(fetch_allow_private=True, fetch_max_bytes=1000)

    assert len(fetch_page(f"{server}/big", config)) == 1000


@pytest.mark.parametrize(
    ("path", "config", "message"),
    [
        pytest.param("/page", CreativeConfig(), "non-public address", id="loopback"),
        pytest.param(
            "/slow",
            CreativeConfig(fetch_allow_private=True, fetch_timeout_s=0.3),
            "within 0.3 s",
            id="slow",
        ),
        pytest.param("/missing", LOCAL, "answered 404", id="404"),
        pytest.param("/redirect-out", LOCAL, "scheme 'file'", id="redirect-to-file"),
    ],
)
def test_fetch_refuses(
    server: str, path: str, config: CreativeConfig, message: str
) -> None:
    """Private addresses, slow servers, errors and bad redirects are refused."""
    started = time.monotonic()

    with pytest.raises(FetchError, match=message):
        fetch_page(f"{server}{path}", config)

    assert time.monotonic() - started < 2.5  # never waits for the slow page


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("ftp://example.com/a", "scheme 'ftp' is not allowed"),
        ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
        ("http:///nohost", "names no host"),
    ],
)
def test_fetch_refuses_bad_urls(url: str, message: str) -> None:
    """Only http(s) URLs with a host are fetched."""
    with pytest.raises(FetchError, match=message):
        fetch_page(url, LOCAL)


def test_fetched_page_feeds_the_analysis(server: str, settings: Settings) -> None:
    """A landing page's extracted text is analysed with the title."""
    embedder = CountingEmbedder()
    analyzer = CreativeAnalyzer(settings, None, embedder=embedder, config=LOCAL)

    [result] = analyzer.analyse(
        [Creative(title="Summer", landing_url=f"{server}/page")]
    )

    assert result is not None and result.fetch_error is None
    [texts] = [call for call in embedder.calls if len(call) == 1]
    assert "golden lager" in texts[0]


def test_failed_fetch_is_marked_and_the_title_still_analysed(
    server: str, settings: Settings
) -> None:
    """A page that cannot be fetched sets `fetch_error`; the title is analysed."""
    client = fakeredis.FakeRedis()
    config = CreativeConfig(fetch_wait_s=2.0)
    analyzer = CreativeAnalyzer(
        settings, client, embedder=CountingEmbedder(), config=config
    )
    creative = Creative(title="Cold lager", landing_url=f"{server}/page")

    [result] = analyzer.analyse([creative])

    assert result is not None
    assert "non-public address" in (result.fetch_error or "")
    assert result.topics and result.text_chars == len("Cold lager")
    ttl = client.ttl(settings.key("creative", result.key))
    assert 0 < ttl <= CreativeConfig().error_ttl_s


def test_a_slow_page_never_holds_up_the_analysis(
    server: str, settings: Settings
) -> None:
    """Past `fetch_wait_s` the title is analysed now and the page used later."""
    client = fakeredis.FakeRedis()
    config = CreativeConfig(
        fetch_allow_private=True, fetch_timeout_s=10.0, fetch_wait_s=0.2
    )
    embedder = CountingEmbedder()
    analyzer = CreativeAnalyzer(settings, client, embedder=embedder, config=config)
    creative = Creative(title="Summer", landing_url=f"{server}/slow-page")
    started = time.monotonic()

    [early] = analyzer.analyse([creative])

    assert time.monotonic() - started < 2.0  # the page takes 3 s
    assert early is not None and early.fetch_error == FETCH_PENDING
    assert early.text_chars == len("Summer")
    key = settings.key("creative", early.key)
    assert 0 < client.ttl(key) <= config.pending_ttl_s
    assert analyzer.wait_for_pages(10.0)
    client.delete(key)  # as if the short TTL had passed

    [late] = analyzer.analyse([creative])

    assert late is not None and late.fetch_error is None
    assert late.text_chars > len("Summer")


def test_warm_up_embeds_the_taxonomy_once(settings: Settings) -> None:
    """After a warm-up, analysing reads only the creatives, not the taxonomy."""
    embedder = CountingEmbedder()
    analyzer = CreativeAnalyzer(settings, None, embedder=embedder)

    analyzer.warm_up()
    analyzer.analyse([Creative(title="Cold lager")])

    assert [len(call) for call in embedder.calls] == [len(load_categories()), 1]
