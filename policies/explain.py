"""`adorch policy explain`: why Policy allowed or denied each ad of a request.

    adorch policy explain REQUEST.json [--ad AD_ID] [--json] [--caps]

REQUEST.json is an OpenRTB 2.6 BidRequest (recognised by its `imp` array; its
candidates are the demo catalogue, `config/creatives.yaml`) or one of our
`AdRequest`s; `-` reads standard input. The rules are the ones a worker would load
from `settings.policies_dir`. Frequency caps need Redis, so they are checked only
with `--caps`. Context's and Content's outputs are not recomputed: the country and
age come from the request itself and ads are judged by their declared categories.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ad_orchestrator.errors import AdOrchestratorError
from ad_orchestrator.openrtb import bid_request_to_ad_request
from ad_orchestrator.schemas import AdRequest, parse_request
from ad_orchestrator.settings import Settings
from policies import Evaluation, build_engine
from policies.frequency import caps_reached, user_hash


def register(
    subparsers: argparse._SubParsersAction,
    settings_factory: Callable[[], Settings],
) -> None:
    """Add `policy explain` to the `adorch` parser.

    Args:
        subparsers: The object `ArgumentParser.add_subparsers()` returned.
        settings_factory: Builds the settings when the command runs.
    """
    policy = subparsers.add_parser("policy", help="explain Policy's decisions")
    actions = policy.add_subparsers(dest="policy_command", required=True)
    explain = actions.add_parser(
        "explain", help="which rules fired for a request and why each ad was denied"
    )
    explain.add_argument("request", help="BidRequest or AdRequest JSON file, or -")
    explain.add_argument("--ad", help="explain only this ad id")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.add_argument(
        "--caps", action="store_true", help="also check frequency caps in Redis"
    )
    explain.set_defaults(func=lambda args: run_explain(args, settings_factory()))


def read_request(source: str, stdin: TextIO | None = None) -> AdRequest:
    """Read an OpenRTB BidRequest or an AdRequest from a file (or `-`).

    Raises:
        RequestValidationError: the request is malformed (names the field).
        OSError, ValueError: the file cannot be read or is not JSON.
    """
    text = (stdin or sys.stdin).read() if source == "-" else Path(source).read_text()
    data = json.loads(text)
    if isinstance(data, dict) and "imp" in data:
        return bid_request_to_ad_request(data)
    return parse_request(data)


def explain(
    request: AdRequest, settings: Settings, *, with_caps: bool = False
) -> Evaluation:
    """Evaluate a request as the Policy agent would, keeping every reason."""
    engine = build_engine(settings)
    reached: dict[str, list[str]] = {}
    if with_caps and engine.rules.frequency_caps:
        from ad_orchestrator.app import runtime  # noqa: PLC0415 - needs Redis

        campaigns = [[ad.campaign_id for ad in request.candidates]]
        (reached,) = caps_reached(
            runtime().redis,
            settings,
            engine.rules.frequency_caps,
            [user_hash(settings, request)],
            campaigns,
        )
    return engine.evaluate(request, caps_reached=reached)


def as_dict(evaluation: Evaluation, ad_id: str | None = None) -> dict[str, Any]:
    """Return the explanation as JSON-ready data (one ad's, with `ad_id`)."""
    ads = {ad: "allowed" for ad in evaluation.allowed}
    reasons = {
        ad: [{"rule": f.rule_id, "reason": f.reason} for f in findings]
        for ad, findings in evaluation.denied.items()
    }
    if ad_id is not None:
        ads = {k: v for k, v in ads.items() if k == ad_id}
        reasons = {k: v for k, v in reasons.items() if k == ad_id}
    return {
        "request_id": evaluation.request_id,
        "country": evaluation.country,
        "age_at_least": evaluation.age,
        "personalised": evaluation.personalised,
        "consent": [
            {"rule": f.rule_id, "reason": f.reason} for f in evaluation.consent
        ],
        "allowed": sorted(ads),
        "denied": reasons,
        "rules_fired": evaluation.rules_fired,
    }


def format_text(evaluation: Evaluation, ad_id: str | None = None) -> str:
    """Return the explanation as lines a person reads."""
    age = "unknown" if evaluation.age is None else f"at least {evaluation.age}"
    lines = [
        f"request {evaluation.request_id}: country "
        f"{evaluation.country or 'unknown'}, age {age}",
        "personalised: "
        + ("yes" if evaluation.personalised else "no (contextual ads only)"),
    ]
    lines += [f"  {f.rule_id}: {f.reason}" for f in evaluation.consent]
    order = [*evaluation.allowed, *evaluation.denied]
    shown = [ad for ad in order if ad_id is None or ad == ad_id]
    width = max((len(ad) for ad in shown), default=0)
    lines.append(
        f"ads: {len(evaluation.allowed)} allowed, {len(evaluation.denied)} denied"
    )
    for ad in shown:
        findings = evaluation.denied.get(ad)
        if not findings:
            lines.append(f"  {ad:<{width}}  allowed")
            continue
        for index, finding in enumerate(findings):
            label = f"{ad:<{width}}  DENIED" if index == 0 else " " * (width + 8)
            lines.append(f"  {label}  {finding.rule_id}: {finding.reason}")
    fired = ", ".join(evaluation.rules_fired) or "none"
    lines.append(f"rules fired: {fired}")
    return "\n".join(lines)


def run_explain(
    args: argparse.Namespace, settings: Settings, out: TextIO | None = None
) -> int:
    """Run `adorch policy explain`; return the exit status (2: bad input)."""
    out = out or sys.stdout
    try:
        request = read_request(args.request)
        evaluation = explain(request, settings, with_caps=args.caps)
    except (AdOrchestratorError, OSError, ValueError) as error:
        print(f"adorch policy explain: {error}", file=sys.stderr)
        return 2
    ad_ids = {ad.ad_id for ad in request.candidates}
    if args.ad is not None and args.ad not in ad_ids:
        print(
            f"adorch policy explain: ad {args.ad!r} is not a candidate of request "
            f"{request.request_id}; candidates: {', '.join(sorted(ad_ids))}",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(as_dict(evaluation, args.ad), indent=2), file=out)
    else:
        print(format_text(evaluation, args.ad), file=out)
    return 0
