"""Reading devices, countries, time zones and request contexts (`devices`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from ad_orchestrator import devices
from ad_orchestrator.features import ContextFields, encode_context
from ad_orchestrator.schemas import AdRequest, DeviceContext

CHROME_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0 Safari/537.36"
)
ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36"
)
IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 16_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/16.0 Mobile/15E148 Safari/604.1"
)
SAMSUNG_TV = (
    "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like "
    "Gecko) SamsungBrowser/2.2 Chrome/63.0.3239.84 TV Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/120.0.0.0 Safari/537.36"
)


@pytest.mark.parametrize(
    ("ua", "device_class", "os_family", "browser", "is_bot"),
    [
        pytest.param(
            CHROME_DESKTOP, "desktop", "Windows", "Chrome", False, id="chrome"
        ),
        pytest.param(
            IPHONE_SAFARI, "mobile", "iOS", "Mobile Safari", False, id="iphone"
        ),
        pytest.param(ANDROID_PHONE, "mobile", "Android", "Chrome", False, id="android"),
        pytest.param(ANDROID_TABLET, "tablet", "Android", "Chrome", False, id="tablet"),
        pytest.param(IPAD, "tablet", "iOS", "Mobile Safari", False, id="ipad"),
        pytest.param(SAMSUNG_TV, "ctv", "Tizen", "Samsung Internet", False, id="tv"),
        pytest.param(GOOGLEBOT, "other", None, "Googlebot", True, id="googlebot"),
        pytest.param("curl/8.4.0", "other", None, "curl", True, id="curl"),
        pytest.param("python-requests/2.31", "other", None, None, True, id="requests"),
        pytest.param(HEADLESS, "other", "Linux", "HeadlessChrome", True, id="headless"),
    ],
)
def test_parse_user_agent_table(
    ua: str, device_class: str, os_family: str | None, browser: str | None, is_bot: bool
) -> None:
    """Real user agents map to the expected class, OS, browser and bot flag."""
    info = devices.parse_user_agent(ua)

    assert info.device_class == device_class
    assert info.os == os_family
    if browser is not None:
        assert info.browser == browser
    assert info.is_bot is is_bot


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("us", "US"),
        ("USA", "US"),
        ("gb", "GB"),
        ("GBR", "GB"),
        (" deu ", "DE"),
        ("uk", "GB"),
        ("EL", "GR"),
    ],
)
def test_normalise_country_accepts_alpha2_and_alpha3_any_case(
    code: str, expected: str
) -> None:
    """Alpha-2 and alpha-3 codes in any case become upper-case alpha-2."""
    assert devices.normalise_country(code) == expected


@pytest.mark.parametrize("code", ["bad", "XX", "U", "ZZZ"])
def test_normalise_country_rejects_unknown_codes_with_a_warning(
    code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An unknown code gives None and a warning that names the code."""
    devices.normalise_country.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ad_orchestrator.devices"):
        assert devices.normalise_country(code) is None
    assert repr(code) in caplog.text
    assert "not an ISO 3166" in caplog.text


@pytest.mark.parametrize(
    ("offset", "country", "hour", "source"),
    [
        pytest.param(-300, None, 18, "utcoffset", id="offset-minus-5h"),
        pytest.param(330, None, 4, "utcoffset", id="offset-india"),
        pytest.param(60, "US", 0, "utcoffset", id="offset-wins-over-country"),
        pytest.param(None, "US", 18, "country", id="us-new-york-winter"),
        pytest.param(None, "JP", 8, "country", id="japan"),
        pytest.param(None, None, 23, "utc", id="unknown"),
    ],
)
def test_local_time_from_offset_or_country(
    offset: int | None, country: str | None, hour: int, source: str
) -> None:
    """The offset wins; else the country's main zone; else UTC."""
    when = datetime(2024, 1, 15, 23, 0, tzinfo=UTC)

    local, how = devices.local_time(when, offset, country)

    assert (local.hour, how) == (hour, source)


def test_country_zone_follows_daylight_saving() -> None:
    """The country's zone applies DST: New York is UTC-4 in July, UTC-5 in January."""
    summer = datetime(2024, 7, 1, 12, tzinfo=UTC)
    winter = datetime(2024, 1, 1, 12, tzinfo=UTC)

    assert devices.local_time(summer, None, "US")[0].hour == 8
    assert devices.local_time(winter, None, "US")[0].hour == 7


@pytest.mark.parametrize(
    ("sua", "device_class", "os_name", "browser"),
    [
        pytest.param(
            {
                "browsers": [
                    {"brand": "Not A;Brand", "version": ["99"]},
                    {"brand": "Google Chrome", "version": ["120"]},
                ],
                "platform": {"brand": "Android", "version": ["14"]},
                "mobile": 1,
            },
            "mobile",
            "Android",
            "Google Chrome",
            id="android-phone",
        ),
        pytest.param(
            {"platform": {"brand": "Android"}, "mobile": 0},
            "tablet",
            "Android",
            None,
            id="android-not-mobile",
        ),
        pytest.param(
            {
                "browsers": [{"brand": "Microsoft Edge"}],
                "platform": {"brand": "Windows"},
            },
            "desktop",
            "Windows",
            "Microsoft Edge",
            id="windows",
        ),
    ],
)
def test_device_from_sua(
    sua: dict, device_class: str, os_name: str, browser: str | None
) -> None:
    """Structured user agents give class, OS and the first non-GREASE browser."""
    info = devices.device_from_sua(sua)

    assert info is not None
    assert (info.device_class, info.os, info.browser) == (
        device_class,
        os_name,
        browser,
    )


def test_headless_browser_brand_in_sua_is_a_bot() -> None:
    """A HeadlessChrome brand in client hints marks the device as a bot."""
    sua = {"browsers": [{"brand": "HeadlessChrome"}], "platform": {"brand": "Linux"}}

    info = devices.describe_device(DeviceContext(sua=sua))

    assert (info.is_bot, info.device_class) == (True, "other")


def test_describe_device_prefers_devicetype_then_sua_then_ua() -> None:
    """devicetype beats sua, sua beats the UA string, and bots stay bots."""
    sua = {"platform": {"brand": "Android"}, "mobile": 1}

    by_type = devices.describe_device(
        DeviceContext(ua=CHROME_DESKTOP, sua=sua, device_type=5)
    )
    by_sua = devices.describe_device(DeviceContext(ua=CHROME_DESKTOP, sua=sua))
    by_ua = devices.describe_device(DeviceContext(ua=CHROME_DESKTOP))
    bot = devices.describe_device(DeviceContext(ua=GOOGLEBOT, device_type=2))
    nothing = devices.describe_device(DeviceContext())

    assert (by_type.device_class, by_type.source) == ("tablet", "devicetype")
    assert (by_sua.device_class, by_sua.source) == ("mobile", "sua")
    assert (by_ua.device_class, by_ua.source) == ("desktop", "ua")
    assert (bot.is_bot, bot.device_class) == (True, "other")
    assert (nothing.device_class, nothing.source) == ("unknown", "none")


def _request(**overrides: object) -> AdRequest:
    data: dict = {
        "request_id": "r1",
        "timestamp": "2024-03-10T15:30:00Z",  # a Sunday
        "slots": [{"slot_id": "s1", "position": 2}],
        "candidates": [{"ad_id": "a1", "campaign_id": "c1"}],
    }
    data.update(overrides)
    return AdRequest.model_validate(data)


def test_request_context_reads_every_field() -> None:
    """Local time from the country, device, country, age and position all land."""
    request = _request(
        device={"ua": IPHONE_SAFARI},
        geo={"country": "gbr"},
        user={"yob": 2000, "features": {"segment": "x"}},
    )

    ctx = devices.request_context(request)

    assert ctx.fields == ContextFields(15, 6, "mobile", "GB", 2, {"segment": "x"})
    assert (ctx.age, ctx.tz_source, ctx.device.is_bot) == (24, "country", False)


def test_default_context_uses_utc_and_unknowns() -> None:
    """The fallback context keeps only time (UTC), position and user features."""
    request = _request(
        geo={"utcoffset": 120, "country": "DE"}, device={"ua": CHROME_DESKTOP}
    )

    ctx = devices.default_context(request)

    assert (ctx.fields.hour, ctx.fields.device_class, ctx.fields.country) == (
        15,
        "unknown",
        None,
    )
    assert encode_context([ctx.fields]).shape == (1, encode_context([]).shape[1])


@pytest.mark.parametrize(
    ("yob", "age"), [(2005, 19), (1850, None), (2030, None), (None, None)]
)
def test_age_from_yob(yob: int | None, age: int | None) -> None:
    """Age is the request year minus yob; impossible ages are unknown."""
    assert devices.age_from_yob(yob, datetime(2024, 6, 1, tzinfo=UTC)) == age
