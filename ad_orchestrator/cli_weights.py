"""`adorch weights ...` and `adorch train ...`: the operator's side of the weight store.

The lead's `ad_orchestrator.cli` builds the top-level parser and calls `register`,
which adds:

    adorch weights list     [--agent content]
    adorch weights show     VERSION [--agent content]
    adorch weights promote  VERSION [--agent content]
    adorch weights rollback [--to VERSION] [--agent content]
    adorch train            [--agent content] [--force] [--tolerance 0.05] ...

Each subcommand sets `func`, a callable taking the parsed arguments and returning
the process exit status.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ad_orchestrator.errors import AdOrchestratorError
from ad_orchestrator.settings import Settings
from ad_orchestrator.weights import VersionInfo, WeightStore, open_store

logger = logging.getLogger(__name__)

AGENTS = ("content", "budget")


def register(
    subparsers: argparse._SubParsersAction,
    settings_factory: Callable[[], Settings],
) -> None:
    """Add the `weights` and `train` subcommands to the `adorch` parser.

    Args:
        subparsers: The object `ArgumentParser.add_subparsers()` returned.
        settings_factory: Builds the settings when a command runs (not at parse
            time, so `--help` works without Redis).
    """
    weights = subparsers.add_parser(
        "weights", help="list, inspect, promote and roll back agents' weights"
    )
    actions = weights.add_subparsers(dest="weights_command", required=True)

    listing = actions.add_parser("list", help="stored versions, newest last")
    _agent_option(listing)
    listing.set_defaults(func=lambda a: _run(settings_factory, _list, a))

    show = actions.add_parser("show", help="a version's verified metadata as JSON")
    _agent_option(show)
    show.add_argument("version", type=int)
    show.set_defaults(func=lambda a: _run(settings_factory, _show, a))

    promote = actions.add_parser(
        "promote", help="serve a stored version now (no gate; see `adorch train`)"
    )
    _agent_option(promote)
    promote.add_argument("version", type=int)
    promote.set_defaults(func=lambda a: _run(settings_factory, _promote, a))

    rollback = actions.add_parser(
        "rollback", help="serve the previously serving version again"
    )
    _agent_option(rollback)
    rollback.add_argument(
        "--to", type=int, default=None, help="serve this version instead"
    )
    rollback.set_defaults(func=lambda a: _run(settings_factory, _rollback, a))

    # Imported here: the trainer pulls in torch and pandas, which `weights list`
    # does not need.
    from rl import promote as promote_module

    train = subparsers.add_parser(
        "train",
        help="train on logged data, evaluate off-policy, promote through the gate",
    )
    promote_module.add_arguments(train)
    train.set_defaults(
        func=lambda a: promote_module.run_from_args(settings_factory(), a)
    )


def _agent_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agent", choices=AGENTS, default="content", help="default: content"
    )


def _run(
    settings_factory: Callable[[], Settings],
    command: Callable[[WeightStore, argparse.Namespace], int],
    args: argparse.Namespace,
) -> int:
    store = open_store(settings_factory())
    try:
        return command(store, args)
    except AdOrchestratorError as exc:
        print(f"error: {exc}")
        return 1


def _list(store: WeightStore, args: argparse.Namespace) -> int:
    infos = store.list_versions(args.agent)
    if not infos:
        print(f"no weights stored for agent {args.agent!r}; run `adorch train`")
        return 0
    print(format_versions(infos))
    return 0


def _show(store: WeightStore, args: argparse.Namespace) -> int:
    metadata = store.metadata(args.agent, args.version)
    serving = store.serving_version(args.agent)
    print(json.dumps({"serving": serving == args.version, **metadata}, indent=2))
    return 0


def _promote(store: WeightStore, args: argparse.Namespace) -> int:
    previous = store.serving_version(args.agent)
    store.set_serving(args.agent, args.version)
    print(f"{args.agent}: now serving version {args.version} (was {previous})")
    return 0


def _rollback(store: WeightStore, args: argparse.Namespace) -> int:
    previous = store.serving_version(args.agent)
    version = store.rollback(args.agent, args.to)
    print(f"{args.agent}: rolled back to version {version} (was {previous})")
    return 0


def _cell(value: Any, digits: int = 5) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_versions(infos: Sequence[VersionInfo]) -> str:
    """Render stored versions as an aligned text table."""
    header = ("", "version", "created (UTC)", "KiB", "schema", "gate", "value [95% CI]")
    rows = [header]
    for info in infos:
        meta = info.metadata
        created = meta.get("created")
        when = (
            datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(created, int | float)
            else "-"
        )
        gate = meta.get("promotion") or {}
        if gate.get("forced"):
            verdict = "forced"
        elif "promote" in gate:
            verdict = "passed" if gate["promote"] else "refused"
        else:
            verdict = "-"
        ope = meta.get("ope") or {}
        value = ope.get("value")
        interval = (
            f"{_cell(value)} [{_cell(ope.get('low'))}, {_cell(ope.get('high'))}]"
            if value is not None
            else "-"
        )
        rows.append(
            (
                "*" if info.serving else "",
                str(info.version),
                when,
                f"{info.size_bytes / 1024:.1f}",
                str(meta.get("input_schema", "-")),
                verdict,
                interval,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(* = serving)")
    return "\n".join(lines)
