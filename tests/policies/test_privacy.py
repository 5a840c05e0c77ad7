"""Tests of US Privacy and GPP parsing in `policies.privacy`."""

from __future__ import annotations

import base64

import pytest

from policies.privacy import PrivacySignalError, parse_gpp, us_privacy_opt_out

# From the IAB GPP documentation: TCF EU v2 (section 2) and US Privacy (section 6).
GPP_TCF_USP = "DBACNYA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1NYN"
# From the IAB GPP documentation: US national (section 7), no opt-outs, GPC segment.
GPP_USNAT = "DBABLA~BVQqAAAAAgA.QA"


def usnat(sale: int, sharing: int, targeting: int) -> str:
    """Build a US national section with the given opt-out values (1 = opted out)."""
    bits = format(1, "06b") + "01" * 4 + "00" * 2
    bits += format(sale, "02b") + format(sharing, "02b") + format(targeting, "02b")
    bits += "0" * 40
    bits += "0" * (-len(bits) % 8)
    data = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return "DBABLA~" + base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    ("value", "opted_out"),
    [("1YYN", True), ("1yyn", True), ("1NNN", False), ("1---", False), ("1-Y-", True)],
)
def test_us_privacy_opt_out(value: str, opted_out: bool) -> None:
    """The third character says whether the user opted out of sale."""
    assert us_privacy_opt_out(value) is opted_out


@pytest.mark.parametrize(
    "value",
    ["", "1YY", "2YYN", "1YYNN", "us_privacy", "1XYN"],
    ids=["empty", "short", "version-2", "long", "placeholder", "bad-char"],
)
def test_us_privacy_rejects_malformed(value: str) -> None:
    """A malformed US Privacy string is an error naming the expected shape."""
    with pytest.raises(PrivacySignalError, match=r"must be version 1 followed by"):
        us_privacy_opt_out(value)


def test_gpp_header_lists_sections_and_reads_us_privacy() -> None:
    """The header's Fibonacci-coded ids decode; section 6 is read as US Privacy."""
    gpp = parse_gpp(GPP_TCF_USP)
    assert gpp.section_ids == [2, 6]
    assert gpp.sections[2].startswith("CPXxRf")
    assert gpp.opt_outs == {6: {"sale": True}}
    assert gpp.opted_out is True


def test_gpp_usnat_without_opt_outs() -> None:
    """The IAB's US national example opts out of nothing (values 2)."""
    gpp = parse_gpp(GPP_USNAT)
    assert gpp.section_ids == [7]
    assert gpp.opt_outs == {
        7: {"sale": False, "sharing": False, "targeted_advertising": False}
    }
    assert gpp.opted_out is False


@pytest.mark.parametrize(
    ("values", "opted_out"),
    [
        ((1, 2, 2), True),
        ((2, 1, 2), True),
        ((2, 2, 1), True),
        ((2, 2, 2), False),
        ((0, 0, 0), False),
    ],
    ids=["sale", "sharing", "targeting", "none", "not-applicable"],
)
def test_gpp_usnat_opt_outs(values: tuple[int, int, int], opted_out: bool) -> None:
    """Any of sale, sharing or targeted-advertising opt-out counts."""
    assert parse_gpp(usnat(*values)).opted_out is opted_out


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", r"empty"),
        ("DBACNYA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA", r"but 1 follow"),
        ("CBACNYA~x~1NYN", r"type 2; expected 3"),
        ("DBABLA~BVQ", r"section 7 ends before"),
        ("D$~x", r"not base64url"),
        ("DBACNYA~x~bogus", r"US Privacy string 'bogus'"),
    ],
    ids=[
        "empty",
        "missing-section",
        "bad-type",
        "short-usnat",
        "not-base64",
        "bad-usp-section",
    ],
)
def test_gpp_malformed(value: str, message: str) -> None:
    """A GPP string that cannot be read is an error saying why."""
    with pytest.raises(PrivacySignalError, match=message):
        parse_gpp(value)
