"""What a request says about the device, the place and the local time.

The Context agent and the Content agent both turn a request into readable fields
(`request_context`) and then into the shared encoding (`features.encode_context`);
this module is the one place that does it, so the two agents, and the trainer that
builds requests from logs, always see the same hour, weekday, device class and
country for the same request.

Library choices:

- User agents: `ua-parser` (1.x), the Python port of uap-core. Its regex data ships
  as the separate `ua-parser-builtins` package, released monthly from uap-core, so
  new browsers and crawlers arrive with a dependency bump and no code change.
  `user-agents` is a thin wrapper over the same parser whose last release is years
  old; the device-class rules it adds are a few lines, written here instead. Parses
  are cached (`functools.lru_cache`) because real traffic repeats a small set of
  user agents.
- Countries: `pycountry` (ISO 3166 from Debian's iso-codes).
- Time zones: `geo.utcoffset` (minutes) wins; else the country's first zone in
  `pytz.country_timezones`, which follows tzdata's `zone.tab`, where the most
  populous zone of a country comes first (America/New_York for US), applied with
  the standard library's `zoneinfo` so daylight saving time is right.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pycountry
import pytz
import ua_parser

from ad_orchestrator.features import DEVICE_CLASSES, OPENRTB_DEVICE_TYPE, ContextFields
from ad_orchestrator.schemas import AdRequest, DeviceContext

log = logging.getLogger(__name__)

MSG_BAD_COUNTRY = (
    "country code %r is not an ISO 3166 alpha-2 or alpha-3 code; treating the "
    "country as unknown"
)
MSG_NO_ZONE = "no time zone known for country %s; using UTC"

# Codes ISO 3166 reserves "exceptionally" that traffic still carries: the UK for
# GB, and the European Union's EL for Greece.
EXCEPTIONAL_CODES = {"UK": "GB", "EL": "GR"}

# Non-browser HTTP clients: real people do not browse with these, so an ad shown to
# them is never seen. uap-core names crawlers' device family "Spider" but leaves
# these as ordinary user agents.
HTTP_CLIENT_FAMILIES = frozenset(
    {
        "curl",
        "Wget",
        "Python Requests",
        "python-requests",
        "Python-urllib",
        "Go-http-client",
        "Apache-HttpClient",
        "Java",
        "libwww-perl",
        "PhantomJS",
        "HeadlessChrome",
        "Scrapy",
        "axios",
        "node-fetch",
    }
)
_BOT_WORDS = re.compile(r"bot\b|crawl|spider|slurp|headless|scrape", re.IGNORECASE)
_TV_WORDS = re.compile(r"smart-?tv|smarttv|\btv\b|hbbtv|crkey|aft[a-z]", re.IGNORECASE)
TV_OS = frozenset({"Tizen", "webOS", "Roku", "tvOS", "Android TV", "Fire OS TV"})
MOBILE_OS = frozenset(
    {"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "HarmonyOS"}
)
DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "macOS",
        "Linux",
        "Ubuntu",
        "Fedora",
        "Debian",
        "Chrome OS",
        "FreeBSD",
        "OpenBSD",
    }
)
# Structured user agent (OpenRTB 2.6 `device.sua.platform.brand`), as browsers send
# it in the Sec-CH-UA-Platform client hint.
SUA_DESKTOP = frozenset({"windows", "macos", "linux", "chrome os", "chromeos"})
SUA_MOBILE = frozenset({"android", "ios"})
# GREASE brands that browsers add to client hints on purpose; never a browser name.
_SUA_GREASE = re.compile(r"not.?a.?brand|^chromium$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the service knows about a device.

    Attributes:
        device_class: One of `features.DEVICE_CLASSES`.
        os: Operating system family, or None.
        browser: Browser (or client) family, or None.
        is_bot: Whether the user agent is a crawler or an automated HTTP client.
        source: Where the device class came from: "devicetype", "sua", "ua" or
            "none".
    """

    device_class: str = "unknown"
    os: str | None = None
    browser: str | None = None
    is_bot: bool = False
    source: str = "none"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The readable context of one request, as Context and Content both see it.

    Attributes:
        fields: What `features.encode_context` encodes.
        device: The parsed device.
        age: Age in whole years from `user.yob` at the request's year, or None.
        local_time: The request time in the user's time zone (UTC when unknown).
        tz_source: How the zone was found: "utcoffset", "country" or "utc".
    """

    fields: ContextFields
    device: DeviceInfo
    age: int | None
    local_time: datetime
    tz_source: str


# Countries --------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def normalise_country(code: str | None) -> str | None:
    """Return the ISO 3166 alpha-2 code (upper case) for an alpha-2 or alpha-3 code.

    Any case is accepted ("us", "USA", "gbr"), and the exceptionally reserved "UK"
    and "EL" mean GB and GR. An unknown code gives None and a warning, since a
    request with a bad country is still worth deciding.
    """
    if code is None:
        return None
    text = code.strip().upper()
    if not text:
        return None
    text = EXCEPTIONAL_CODES.get(text, text)
    found = None
    if len(text) == 2:
        found = pycountry.countries.get(alpha_2=text)
    elif len(text) == 3:
        found = pycountry.countries.get(alpha_3=text)
    if found is None:
        log.warning(MSG_BAD_COUNTRY, code)
        return None
    return str(found.alpha_2)


@lru_cache(maxsize=512)
def country_zone(alpha2: str) -> ZoneInfo | None:
    """Return the time zone of a country: the first (most populous) in tzdata."""
    zones = pytz.country_timezones.get(alpha2.upper())
    if not zones:
        log.info(MSG_NO_ZONE, alpha2)
        return None
    try:
        return ZoneInfo(zones[0])
    except ZoneInfoNotFoundError:
        log.info(MSG_NO_ZONE, alpha2)
        return None


def local_time(
    when: datetime, utcoffset_min: int | None, country: str | None
) -> tuple[datetime, str]:
    """Return the local time of `when` and how the zone was chosen.

    Args:
        when: A timezone-aware time.
        utcoffset_min: OpenRTB `geo.utcoffset`, minutes from UTC; wins when set.
        country: Alpha-2 code whose main zone is used when no offset is given.

    Returns:
        The local time and "utcoffset", "country" or "utc".
    """
    if utcoffset_min is not None:
        return when.astimezone(timezone(timedelta(minutes=utcoffset_min))), "utcoffset"
    if country:
        zone = country_zone(country)
        if zone is not None:
            return when.astimezone(zone), "country"
    return when.astimezone(UTC), "utc"


# User agents ------------------------------------------------------------------------


@lru_cache(maxsize=8192)
def parse_user_agent(ua: str) -> DeviceInfo:
    """Parse a user-agent string into a device class, OS, browser and bot flag."""
    parsed = ua_parser.parse(ua)
    browser = parsed.user_agent.family if parsed.user_agent else None
    os_family = parsed.os.family if parsed.os else None
    device = parsed.device
    is_bot = bool(
        (device is not None and device.family == "Spider")
        or browser in HTTP_CLIENT_FAMILIES
        or _BOT_WORDS.search(ua)
    )
    if is_bot:
        device_class = "other"
    elif (
        os_family in TV_OS
        or _TV_WORDS.search(ua)
        or (device is not None and device.brand == "Generic_Inettv")
    ):
        device_class = "ctv"
    elif _is_tablet(ua, os_family, device):
        device_class = "tablet"
    elif os_family in MOBILE_OS or "Mobile" in ua:
        device_class = "mobile"
    elif os_family in DESKTOP_OS:
        device_class = "desktop"
    else:
        device_class = "unknown"
    return DeviceInfo(device_class, os_family, browser, is_bot, "ua")


def warm_up() -> None:
    """Load the user-agent parser's rules now (about 0.1 s) rather than mid-batch.

    Agents call it when they are built, after the worker forks.
    """
    ua_parser.parse("Mozilla/5.0 (Windows NT 10.0; Win64; x64)")


def _is_tablet(ua: str, os_family: str | None, device: Any) -> bool:
    family = device.family if device is not None else ""
    brand = device.brand if device is not None else ""
    if family == "iPad" or "Tablet" in (brand or "") or "Kindle" in (family or ""):
        return True
    # Android phones say "Mobile" in the UA and tablets do not (Google's guidance).
    return os_family == "Android" and "Mobile" not in ua


def device_from_sua(sua: Mapping[str, Any]) -> DeviceInfo | None:
    """Read OpenRTB 2.6 `device.sua` (structured user agent); None if it says little.

    `sua.mobile` (0/1) and `sua.platform.brand` decide the class; the first
    browser brand that is not a GREASE value names the browser.
    """
    platform = sua.get("platform") or {}
    os_name = platform.get("brand") if isinstance(platform, Mapping) else None
    browser = None
    is_bot = False
    for entry in sua.get("browsers") or []:
        brand = entry.get("brand") if isinstance(entry, Mapping) else None
        if isinstance(brand, str) and not _SUA_GREASE.search(brand):
            browser = browser or brand
            is_bot = is_bot or bool(_BOT_WORDS.search(brand))
    mobile = sua.get("mobile")
    os_key = os_name.lower() if isinstance(os_name, str) else ""
    if mobile == 1:
        device_class = "mobile"
    elif os_key in SUA_MOBILE:
        device_class = "tablet"  # a phone OS that says it is not mobile
    elif os_key in SUA_DESKTOP:
        device_class = "desktop"
    else:
        device_class = "unknown"
    if device_class == "unknown" and os_name is None and browser is None:
        return None
    return DeviceInfo(device_class, os_name, browser, is_bot, "sua")


def describe_device(device: DeviceContext) -> DeviceInfo:
    """Combine devicetype, `sua` and the UA string into one `DeviceInfo`.

    The device class comes from OpenRTB `devicetype` when given, else from `sua`
    (structured, so preferred), else from the UA string. Bots are found mostly by
    the UA string (crawlers seldom send client hints); a headless browser brand
    in `sua` counts too.
    """
    from_ua = parse_user_agent(device.ua) if device.ua else None
    from_sua = device_from_sua(device.sua) if device.sua else None
    best = from_sua or from_ua or DeviceInfo()
    device_class, source = best.device_class, best.source
    if device.device_type in OPENRTB_DEVICE_TYPE:
        device_class, source = OPENRTB_DEVICE_TYPE[device.device_type], "devicetype"
    is_bot = any(info is not None and info.is_bot for info in (from_ua, from_sua))
    if is_bot:
        device_class = "other"
    if device_class not in DEVICE_CLASSES:
        device_class = "other"
    os_name = (from_sua and from_sua.os) or device.os or (from_ua and from_ua.os)
    browser = (from_sua and from_sua.browser) or (from_ua and from_ua.browser)
    return DeviceInfo(device_class, os_name or None, browser or None, is_bot, source)


# Whole requests ---------------------------------------------------------------------


def age_from_yob(yob: int | None, when: datetime) -> int | None:
    """Return the age in years at `when` of someone born in `yob` (None: unknown).

    OpenRTB gives only the year, so this is the age they reach during that year.
    """
    if yob is None:
        return None
    age = when.year - yob
    return age if 0 <= age <= 130 else None


def request_context(request: AdRequest) -> RequestContext:
    """Turn a request into the readable context both Context and Content encode.

    The hour and weekday are local when `geo.utcoffset` or the country tells the
    zone, else UTC (as in the Open Bandit Dataset, which has no geo).
    """
    device = describe_device(request.device)
    country = normalise_country(request.geo.country)
    when, tz_source = local_time(request.timestamp, request.geo.utcoffset, country)
    fields = ContextFields(
        hour=when.hour,
        weekday=when.weekday(),
        device_class=device.device_class,
        country=country,
        position=request.slots[0].position,
        user_features=request.user.features,
    )
    age = age_from_yob(request.user.yob, request.timestamp)
    return RequestContext(fields, device, age, when, tz_source)


def default_context(request: AdRequest) -> RequestContext:
    """Return the context of last resort: UTC time, unknown device and country.

    Used by the agents' fallbacks, so it touches nothing but the timestamp, the
    first slot and the user features, and does not raise on a valid request.
    """
    when = request.timestamp.astimezone(UTC)
    position = request.slots[0].position if request.slots else 0
    fields = ContextFields(
        when.hour, when.weekday(), "unknown", None, position, request.user.features
    )
    return RequestContext(fields, DeviceInfo(), None, when, "utc")


__all__ = [
    "DeviceInfo",
    "RequestContext",
    "age_from_yob",
    "country_zone",
    "default_context",
    "describe_device",
    "device_from_sua",
    "local_time",
    "normalise_country",
    "parse_user_agent",
    "request_context",
    "warm_up",
]
