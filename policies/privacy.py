"""Privacy signals other than TCF: US Privacy (CCPA) and GPP opt-outs.

Everything here answers one question per signal: did the user opt out of the sale or
sharing of their data (or of targeted advertising)? A signal that cannot be read is
treated as an opt-out, because personalising on a consent we could not read would be
the unsafe mistake; contextual ads are always still possible.

GPP (IAB Global Privacy Platform) strings are `~`-separated: a header listing the
section ids, then one encoded section per id. No maintained Python GPP decoder is
installable here (`pygpp` is not on the package index this project uses), so this
module reads the header and, of each US section, only the opt-out fields, which sit
at fixed bit positions in every version of those sections. Section 2 (TCF EU v2) is
decoded by `policies.tcf`; section 6 is the US Privacy string itself.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from ad_orchestrator.errors import AdOrchestratorError

US_PRIVACY = re.compile(r"^1[YN-]{3}$")

GPP_TCF_EU = 2
GPP_US_PRIVACY = 6
# Section id -> bit offsets (after the 6-bit version) of its opt-out fields, each two
# bits wide (0 not applicable, 1 opted out, 2 did not opt out). From the IAB GPP
# section specifications: usnat, usca, usva, usco, usut, usct.
GPP_US_OPT_OUTS: dict[int, dict[str, int]] = {
    7: {"sale": 18, "sharing": 20, "targeted_advertising": 22},
    8: {"sale": 12, "sharing": 14},
    9: {"sale": 12, "targeted_advertising": 14},
    10: {"sale": 12, "targeted_advertising": 14},
    11: {"sale": 14, "targeted_advertising": 16},
    12: {"sale": 12, "targeted_advertising": 14},
}
OPTED_OUT = 1


class PrivacySignalError(AdOrchestratorError, ValueError):
    """A US Privacy or GPP string does not fit its format."""


def us_privacy_opt_out(value: str) -> bool:
    """Say whether a US Privacy string (`1YYN` style) opts out of sale.

    Characters: version (1), notice given, opted out of sale, LSPA covered; `-`
    means not applicable. `1---` therefore opts out of nothing.

    Raises:
        PrivacySignalError: the string is not four characters of that shape.
    """
    text = value.strip().upper()
    if not US_PRIVACY.match(text):
        raise PrivacySignalError(
            f"US Privacy string {value!r} must be version 1 followed by three of "
            "Y, N or - (for example 1YNN)"
        )
    return text[2] == "Y"


def _base64url_bits(text: str, what: str) -> tuple[int, int]:
    body = text.rstrip("=")
    try:
        data = base64.b64decode(
            body + "=" * (-len(body) % 4), altchars=b"-_", validate=True
        )
    except (binascii.Error, ValueError):
        raise PrivacySignalError(f"GPP {what} is not base64url text") from None
    return int.from_bytes(data, "big"), len(data) * 8


class _BitReader:
    def __init__(self, text: str, what: str) -> None:
        self.value, self.length = _base64url_bits(text, what)
        self.pos = 0
        self.what = what

    def read(self, width: int) -> int:
        if self.pos + width > self.length:
            raise PrivacySignalError(f"GPP {self.what} ends before its fields do")
        self.pos += width
        return (self.value >> (self.length - self.pos)) & ((1 << width) - 1)

    def fibonacci(self) -> int:
        # Fibonacci coding: bits weight 1, 2, 3, 5, 8, ... ending at "11".
        weights = [1, 2]
        total = 0
        previous = 0
        index = 0
        while True:
            bit = self.read(1)
            if bit and previous:
                return total
            while index >= len(weights):
                weights.append(weights[-1] + weights[-2])
            total += weights[index] * bit
            previous = bit
            index += 1


@dataclass
class GppString:
    """The parts of a GPP string this service acts on."""

    section_ids: list[int]
    sections: dict[int, str] = field(default_factory=dict)
    opt_outs: dict[int, dict[str, bool]] = field(default_factory=dict)

    @property
    def opted_out(self) -> bool:
        """True when any US section opts out of sale, sharing or targeting."""
        return any(any(fields.values()) for fields in self.opt_outs.values())


def _section_ids(header: str) -> list[int]:
    bits = _BitReader(header, "header")
    kind, version = bits.read(6), bits.read(6)
    if kind != 3:
        raise PrivacySignalError(f"GPP header has type {kind}; expected 3")
    if version != 1:
        raise PrivacySignalError(f"GPP header has version {version}; expected 1")
    ids: list[int] = []
    last = 0
    for _ in range(bits.read(12)):
        if bits.read(1):
            start = last + bits.fibonacci()
            end = start + bits.fibonacci()
            ids.extend(range(start, end + 1))
            last = end
        else:
            last += bits.fibonacci()
            ids.append(last)
    return ids


def parse_gpp(value: str) -> GppString:
    """Parse a GPP string's header and the opt-out fields of its US sections.

    Raises:
        PrivacySignalError: the header or a US section cannot be read, or the
            number of sections differs from the header's list.
    """
    parts = value.strip().split("~")
    if not parts[0]:
        raise PrivacySignalError("GPP string is empty; expected a header section")
    ids = _section_ids(parts[0])
    if len(parts) - 1 != len(ids):
        raise PrivacySignalError(
            f"GPP header lists sections {ids}, but {len(parts) - 1} follow it"
        )
    gpp = GppString(section_ids=ids, sections=dict(zip(ids, parts[1:], strict=True)))
    for sid, text in gpp.sections.items():
        if sid == GPP_US_PRIVACY:
            gpp.opt_outs[sid] = {"sale": us_privacy_opt_out(text)}
        elif sid in GPP_US_OPT_OUTS:
            # A section may carry sub-sections (GPC) after a '.'; only the core
            # segment holds the opt-out fields.
            bits = _BitReader(text.split(".")[0], f"section {sid}")
            values: dict[str, bool] = {}
            for name, offset in GPP_US_OPT_OUTS[sid].items():
                bits.pos = 0
                bits.read(offset)
                values[name] = bits.read(2) == OPTED_OUT
            gpp.opt_outs[sid] = values
    return gpp
