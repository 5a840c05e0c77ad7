"""Decode IAB TCF consent strings (v2.x, and v1.1 far enough to recognise it).

A TC string is base64url text made of dot-separated segments. The first is the core
segment (who asked, when, which purposes and vendors have consent or legitimate
interest, publisher restrictions); the optional others start with a 3-bit segment
type: 1 disclosed vendors, 2 allowed vendors (removed in TCF 2.2 but still seen),
3 publisher purposes. Every field is read strictly: a string that ends before a field
it declares, a range naming vendor 0 or a vendor above the section's maximum, or a
range whose start is after its end is an error (`TCFDecodeError`), never a guess.

Why our own decoder: the maintained Python package `iab-tcf` (0.2.2) reads zero
bits past the end of a truncated string instead of failing, and checks neither
range entries (vendor 0, vendors above MaxVendorId, start after end) nor
VendorListVersion 0. Of the 16 malformed TCF v2 vectors it raises on none (only
the empty string fails), so a truncated consent string would come back as a
consent. It also returns the language and country codes as bytes. See
`tests/policies/test_tcf.py::test_iab_tcf_package_accepts_malformed_strings`.
The layouts follow the IAB "TCF v2.2 Consent string and vendor list formats" and
"Consent string and vendor list formats v1.1" documents.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from ad_orchestrator.errors import AdOrchestratorError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SEGMENT_CORE = 0
SEGMENT_DISCLOSED_VENDORS = 1
SEGMENT_ALLOWED_VENDORS = 2
SEGMENT_PUBLISHER_TC = 3

RESTRICTION_NOT_ALLOWED = 0
RESTRICTION_REQUIRE_CONSENT = 1
RESTRICTION_REQUIRE_LI = 2


class TCFDecodeError(AdOrchestratorError, ValueError):
    """A TC string is empty, not base64url, or its bits do not fit the format."""


class _Bits:
    """Read big-endian bit fields from bytes, refusing to read past the end."""

    def __init__(self, data: bytes, segment: str) -> None:
        self.value = int.from_bytes(data, "big")
        self.length = len(data) * 8
        self.pos = 0
        self.segment = segment

    def read(self, width: int, what: str) -> int:
        end = self.pos + width
        if end > self.length:
            raise TCFDecodeError(
                f"TC string {self.segment} segment ends at bit {self.length}, but "
                f"{what} needs bits {self.pos}..{end - 1}; the string is truncated "
                "or malformed"
            )
        value = (self.value >> (self.length - end)) & ((1 << width) - 1)
        self.pos = end
        return value

    def flag(self, what: str) -> bool:
        return self.read(1, what) == 1

    def id_set(self, width: int, what: str) -> set[int]:
        """Read `width` bits where bit i (from 0) set means id i + 1 is in the set."""
        if width == 0:
            return set()
        text = format(self.read(width, what), f"0{width}b")
        return {i + 1 for i, bit in enumerate(text) if bit == "1"}

    def letters(self, what: str) -> str:
        first = self.read(6, what)
        second = self.read(6, what)
        if first > 25 or second > 25:
            raise TCFDecodeError(f"TC string {what} must be two letters A-Z")
        return chr(ord("A") + first) + chr(ord("A") + second)

    def deciseconds(self, what: str) -> datetime:
        return EPOCH + timedelta(milliseconds=self.read(36, what) * 100)

    def ranges(
        self, count: int, what: str, max_id: int | None
    ) -> list[tuple[int, int]]:
        """Read `count` range entries (single ids or start..end pairs)."""
        found: list[tuple[int, int]] = []
        for _ in range(count):
            is_range = self.flag(what)
            start = self.read(16, what)
            end = self.read(16, what) if is_range else start
            if start < 1 or start > end or (max_id is not None and end > max_id):
                upper = f"1..{max_id}" if max_id is not None else "ids from 1"
                raise TCFDecodeError(
                    f"TC string {what} has a range entry {start}..{end}, but entries "
                    f"must satisfy start <= end within {upper}"
                )
            found.append((start, end))
        return found

    def vendor_section(self, what: str) -> tuple[int, bool, set[int]]:
        """Read MaxVendorId, the encoding flag and the vendor ids that are set."""
        max_id = self.read(16, f"{what} MaxVendorId")
        if self.flag(f"{what} IsRangeEncoding"):
            count = self.read(12, f"{what} NumEntries")
            return max_id, True, _expand(self.ranges(count, what, max_id))
        return max_id, False, self.id_set(max_id, f"{what} bit field")


def _expand(ranges: list[tuple[int, int]]) -> set[int]:
    """Return the ids of possibly overlapping ranges, expanding each id once.

    Merging first bounds the work by the number of distinct ids (at most 65,535),
    so a string repeating a wide range thousands of times cannot stall a worker.
    """
    ids: set[int] = set()
    upto = 0
    for start, end in sorted(ranges):
        start = max(start, upto + 1)
        if start <= end:
            ids.update(range(start, end + 1))
            upto = end
    return ids


@dataclass
class PublisherRestriction:
    """One publisher restriction: a purpose, a restriction type and its vendors."""

    purpose: int
    restriction_type: int
    vendors: set[int] = field(default_factory=set)


@dataclass
class TCString:
    """A decoded TC string. Sets hold the ids whose bit is set (1-based).

    `version` is 1 for a TCF v1.1 string; such strings fill only the fields v1.1
    has (`purposes_allowed` and `vendor_consents`), because v1.1 is no longer
    supported by the framework and a decision system must not act on it.
    """

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int = 0
    is_service_specific: bool = False
    use_non_standard_texts: bool = False
    special_feature_opt_ins: set[int] = field(default_factory=set)
    purpose_consents: set[int] = field(default_factory=set)
    purpose_legitimate_interests: set[int] = field(default_factory=set)
    purpose_one_treatment: bool = False
    publisher_cc: str = ""
    max_vendor_id: int = 0
    vendor_consent_range_encoded: bool = False
    vendor_consents: set[int] = field(default_factory=set)
    max_vendor_li_id: int = 0
    vendor_legitimate_interests: set[int] = field(default_factory=set)
    publisher_restrictions: list[PublisherRestriction] = field(default_factory=list)
    disclosed_vendors: set[int] | None = None
    allowed_vendors: set[int] | None = None
    pub_purposes_consent: set[int] = field(default_factory=set)
    pub_purposes_li_transparency: set[int] = field(default_factory=set)
    num_custom_purposes: int = 0
    custom_purposes_consent: set[int] = field(default_factory=set)
    custom_purposes_li_transparency: set[int] = field(default_factory=set)
    purposes_allowed: set[int] = field(default_factory=set)

    def restricted_vendors(self, purpose: int, restriction_type: int) -> set[int]:
        """Return the vendors under a restriction type for a purpose (deduplicated)."""
        found: set[int] = set()
        for item in self.publisher_restrictions:
            if item.purpose == purpose and item.restriction_type == restriction_type:
                found |= item.vendors
        return found

    def vendor_may_use(self, vendor_id: int, purposes: list[int]) -> bool:
        """Say whether a vendor has consent for itself and for every purpose.

        A publisher restriction for a purpose and vendor of type "not allowed",
        or "require legitimate interest" (which rules consent out as the legal
        basis), removes that purpose for the vendor, whatever the consent bits say.
        """
        if self.version < 2 or vendor_id not in self.vendor_consents:
            return False
        for purpose in purposes:
            if purpose not in self.purpose_consents:
                return False
            for kind in (RESTRICTION_NOT_ALLOWED, RESTRICTION_REQUIRE_LI):
                if vendor_id in self.restricted_vendors(purpose, kind):
                    return False
        return True


def _segment_bytes(text: str, index: int) -> bytes:
    if not text:
        raise TCFDecodeError(f"TC string segment {index} is empty")
    body = text.rstrip("=")
    # Some encoders (iabtcf-java's tests among them) pad with '='; the TCF format
    # itself is unpadded base64url, so padding is dropped and added back here.
    try:
        return base64.b64decode(
            body + "=" * (-len(body) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        raise TCFDecodeError(
            f"TC string segment {index} is not base64url text "
            "(expected only A-Z a-z 0-9 - _)"
        ) from None


def _common_header(bits: _Bits) -> TCString:
    """Read the fields that open both a v1 and a v2 core string, in their order."""
    return TCString(
        version=bits.read(6, "Version"),
        created=bits.deciseconds("Created"),
        last_updated=bits.deciseconds("LastUpdated"),
        cmp_id=bits.read(12, "CmpId"),
        cmp_version=bits.read(12, "CmpVersion"),
        consent_screen=bits.read(6, "ConsentScreen"),
        consent_language=bits.letters("ConsentLanguage"),
        vendor_list_version=bits.read(12, "VendorListVersion"),
    )


def _core_v2(bits: _Bits) -> TCString:
    tc = _common_header(bits)
    if tc.vendor_list_version < 1:
        raise TCFDecodeError("TC string VendorListVersion is 0; it must be >= 1")
    tc.policy_version = bits.read(6, "TcfPolicyVersion")
    tc.is_service_specific = bits.flag("IsServiceSpecific")
    tc.use_non_standard_texts = bits.flag("UseNonStandardTexts")
    tc.special_feature_opt_ins = bits.id_set(12, "SpecialFeatureOptIns")
    tc.purpose_consents = bits.id_set(24, "PurposesConsent")
    tc.purpose_legitimate_interests = bits.id_set(24, "PurposesLITransparency")
    tc.purpose_one_treatment = bits.flag("PurposeOneTreatment")
    tc.publisher_cc = bits.letters("PublisherCC")
    (tc.max_vendor_id, tc.vendor_consent_range_encoded, tc.vendor_consents) = (
        bits.vendor_section("vendor consent")
    )
    tc.max_vendor_li_id, _, tc.vendor_legitimate_interests = bits.vendor_section(
        "vendor legitimate interest"
    )
    for _ in range(bits.read(12, "NumPubRestrictions")):
        purpose = bits.read(6, "restriction PurposeId")
        kind = bits.read(2, "restriction RestrictionType")
        count = bits.read(12, "restriction NumEntries")
        # Restrictions may name vendors above the consent section's MaxVendorId.
        vendors = _expand(bits.ranges(count, "publisher restriction", None))
        tc.publisher_restrictions.append(PublisherRestriction(purpose, kind, vendors))
    return tc


def _other_segment(tc: TCString, data: bytes, index: int) -> None:
    bits = _Bits(data, f"#{index}")
    kind = bits.read(3, "SegmentType")
    if kind in (SEGMENT_DISCLOSED_VENDORS, SEGMENT_ALLOWED_VENDORS):
        name = "disclosed" if kind == SEGMENT_DISCLOSED_VENDORS else "allowed"
        _, _, vendors = bits.vendor_section(f"{name} vendors")
        if kind == SEGMENT_DISCLOSED_VENDORS:
            tc.disclosed_vendors = vendors
        else:
            tc.allowed_vendors = vendors
    elif kind == SEGMENT_PUBLISHER_TC:
        tc.pub_purposes_consent = bits.id_set(24, "PubPurposesConsent")
        tc.pub_purposes_li_transparency = bits.id_set(24, "PubPurposesLITransparency")
        tc.num_custom_purposes = bits.read(6, "NumCustomPurposes")
        tc.custom_purposes_consent = bits.id_set(
            tc.num_custom_purposes, "CustomPurposesConsent"
        )
        tc.custom_purposes_li_transparency = bits.id_set(
            tc.num_custom_purposes, "CustomPurposesLITransparency"
        )
    else:
        raise TCFDecodeError(
            f"TC string segment {index} has type {kind}; expected 1 (disclosed "
            "vendors), 2 (allowed vendors) or 3 (publisher TC)"
        )


def _core_v1(bits: _Bits) -> TCString:
    tc = _common_header(bits)
    tc.purposes_allowed = bits.id_set(24, "PurposesAllowed")
    tc.max_vendor_id = bits.read(16, "MaxVendorId")
    if not bits.flag("EncodingType"):
        tc.vendor_consents = bits.id_set(tc.max_vendor_id, "vendor bit field")
        return tc
    # Range encoding in v1.1: ranges list the vendors whose consent differs from
    # DefaultConsent.
    default = bits.flag("DefaultConsent")
    count = bits.read(12, "NumEntries")
    listed = _expand(bits.ranges(count, "v1.1 vendor range", tc.max_vendor_id))
    every = set(range(1, tc.max_vendor_id + 1))
    tc.vendor_consents = every - listed if default else listed
    return tc


def detect_version(consent: str) -> int:
    """Return the version field of a TC string without decoding the rest.

    Raises:
        TCFDecodeError: the string is empty or its first segment is not base64url.
    """
    if not isinstance(consent, str) or not consent.strip():
        raise TCFDecodeError("TC string is empty; expected base64url text")
    core = _segment_bytes(consent.strip().split(".")[0], 0)
    return _Bits(core, "core").read(6, "Version")


@lru_cache(maxsize=4096)
def decode(consent: str) -> TCString:
    """Decode a TC string (cached: the same string decodes to the same object).

    Callers must treat the result as read-only.

    Args:
        consent: The TC string as the request carried it.

    Returns:
        The decoded string; `version` says whether it is TCF v2 (2) or v1.1 (1).

    Raises:
        TCFDecodeError: the string is empty, not base64url, of an unknown version
            or does not fit the format.
    """
    version = detect_version(consent)
    parts = consent.strip().split(".")
    core = _segment_bytes(parts[0], 0)
    if version == 1:
        # v1.1 has a single segment; anything after a dot is not v1.1 data and
        # is ignored here because only the version of such a string matters.
        return _core_v1(_Bits(core, "core"))
    if version != 2:
        raise TCFDecodeError(
            f"TC string has version {version}; expected 2 (TCF v2.x) or 1 (v1.1)"
        )
    tc = _core_v2(_Bits(core, "core"))
    for index, text in enumerate(parts[1:], start=1):
        _other_segment(tc, _segment_bytes(text, index), index)
    return tc
