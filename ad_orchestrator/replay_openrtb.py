"""The second replay mode: OpenRTB bid requests in, BidResponses out.

Every `*.json` file of a folder (by default `examples/openrtb/`) is read as an
OpenRTB 2.6 BidRequest, converted at the edge (a request Prebid Server would reject
is rejected here too, with the field named), decided by the running service through
the deadline-aware client, and answered with a BidResponse, printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ad_orchestrator.errors import RequestValidationError
from ad_orchestrator.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

DEFAULT_FOLDER = REPO_ROOT / "examples" / "openrtb"
# OpenRTB requests carry no time; a fixed one keeps the replay's pacing and ages
# reproducible (a weekday afternoon in UTC).
REPLAY_TIME = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)


def replay_folder(
    settings: Settings, folder: Path, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """Decide every BidRequest in `folder`; return one report per file."""
    from ad_orchestrator.app import app, runtime
    from ad_orchestrator.client import decide
    from ad_orchestrator.openrtb import (
        bid_request_to_ad_request,
        decision_to_bid_response,
        load_catalogue,
    )
    from ad_orchestrator.workers import start_worker, workers_answering

    catalogue = load_catalogue(campaigns=runtime().ledger.campaigns)
    by_id = {ad.ad_id: ad for ad in catalogue}
    runtime().reset_campaigns(sorted({ad.campaign_id for ad in catalogue}))
    worker = None
    if not workers_answering(app, settings.queue):
        worker = start_worker(
            app, "replay-openrtb", queue=settings.queue,
            logdir=settings.state_dir / "logs",
        )  # fmt: skip
    reports = []
    try:
        for path in sorted(folder.glob("*.json")):
            bid_request = json.loads(path.read_text())
            name = path.name.removesuffix(".json").removesuffix(".request")
            try:
                request = bid_request_to_ad_request(
                    bid_request, candidates=catalogue, now=REPLAY_TIME
                )
            except RequestValidationError as error:
                reports.append({"file": name, "rejected": error.to_dict()})
                continue
            decision = decide(request, settings=settings, timeout=timeout_s)
            reports.append(
                {
                    "file": name,
                    "decision": decision.model_dump(mode="json"),
                    "bid_response": decision_to_bid_response(
                        decision, bid_request, by_id
                    ),
                }
            )
    finally:
        if worker is not None:
            worker.stop()
    return reports


def format_reports(
    reports: list[dict[str, Any]], cache: dict[str, Any] | None = None
) -> str:
    """Render the replay: one BidResponse (or rejection) per request file."""
    lines = []
    for report in reports:
        lines.append(f"== {report['file']}")
        if "rejected" in report:
            problems = report["rejected"]["problems"]
            why = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
            lines.append(f"   rejected: {why}")
            continue
        lines.append(json.dumps(report["bid_response"], indent=2))
    bids = sum(1 for r in reports if r.get("bid_response", {}).get("seatbid"))
    rejected = sum(1 for r in reports if "rejected" in r)
    no_bids = len(reports) - bids - rejected
    lines.append(
        f"{len(reports)} requests: {bids} bids, {no_bids} no-bids, {rejected} rejected"
    )
    if cache:
        lines.append(
            f"creative cache: hit rate {cache.get('hit_rate', 0):.3f} "
            f"({cache.get('hits')} hits, {cache.get('misses')} misses, "
            f"{cache.get('analysed')} model analyses of unique creatives)"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the OpenRTB replay's options to a command-line parser."""
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="also write JSON")
