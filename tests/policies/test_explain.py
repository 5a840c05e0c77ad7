"""Tests of `adorch policy explain` (`policies.explain`)."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from _policy_requests import make_request

from ad_orchestrator.settings import Settings, load_settings
from policies.explain import register, run_explain

US_19 = {
    "id": "us-19",
    "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}],
    "device": {"geo": {"country": "USA"}},
    "user": {"id": "u1", "yob": 2007},
    "bcat": ["IAB20"],
    "regs": {"us_privacy": "1YYN"},
}


@pytest.fixture
def settings() -> Settings:
    return load_settings()


def _parse(argv: list[str], settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="adorch")
    register(parser.add_subparsers(dest="command"), lambda: settings)
    return parser.parse_args(argv)


def _run(tmp_path: Path, data: Any, *extra: str) -> tuple[int, str]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(data))
    settings = load_settings()
    out = io.StringIO()
    code = run_explain(
        _parse(["policy", "explain", str(path), *extra], settings), settings, out
    )
    return code, out.getvalue()


def test_text_names_each_denial_and_its_rule(tmp_path: Path) -> None:
    """A US 19-year-old: alcohol and gambling denied by age, travel by bcat."""
    code, text = _run(tmp_path, US_19)
    assert code == 0
    assert "brew-lager-01     DENIED  age.alcohol: Alcohol needs age 21+ in US" in text
    assert "travel-city-01    DENIED  block.bcat" in text
    assert "auto-ev-01        allowed" in text
    assert "consent.us_privacy.opt_out" in text
    assert "personalised: no" in text


def test_json_for_one_ad(tmp_path: Path) -> None:
    """--ad limits the answer to one ad; --json prints machine-readable reasons."""
    code, text = _run(tmp_path, US_19, "--ad", "casino-slots-01", "--json")
    data = json.loads(text)
    assert code == 0
    assert list(data["denied"]) == ["casino-slots-01"]
    assert data["denied"]["casino-slots-01"][0]["rule"] == "age.gambling"
    assert data["allowed"] == []
    assert data["country"] == "US"


def test_our_own_request_format_is_accepted(tmp_path: Path) -> None:
    """An AdRequest JSON (no `imp`) is explained with its own candidates."""
    request = make_request(country="GB", yob=2000).model_dump(mode="json")
    code, text = _run(tmp_path, request, "--json")
    assert code == 0
    assert json.loads(text)["allowed"] == ["beer-1", "car-1", "casino-1"]


@pytest.mark.parametrize(
    ("data", "extra", "message"),
    [
        (US_19, ["--ad", "nope"], "ad 'nope' is not a candidate"),
        ({**US_19, "regs": {"gdpr": 2}}, [], "`regs.gdpr`: must be either 0 or 1"),
        ("not json", [], r"invalid AdRequest: `\(root\)`"),
    ],
    ids=["unknown-ad", "invalid-request", "not-a-request"],
)
def test_bad_input_exits_2_with_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    data: Any,
    extra: list[str],
    message: str,
) -> None:
    """Bad input is reported on stderr with exit status 2, never a traceback."""
    code, _ = _run(tmp_path, data, *extra)
    assert code == 2
    assert re.search(message, capsys.readouterr().err)
