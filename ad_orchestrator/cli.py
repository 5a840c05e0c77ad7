"""`adorch`: every command a person types, in one place.

    adorch run            replay the Open Bandit Dataset through the service
    adorch replay-openrtb OpenRTB example requests in, BidResponses out
    adorch worker         a Celery worker for the agents (events on)
    adorch beat           Celery beat (reservation release, periodic retrain)
    adorch flower         Flower with basic auth from settings
    adorch redis start|stop   the embedded Redis
    adorch weights ...    list, show, promote, roll back agents' weights
    adorch train ...      train, evaluate off-policy, promote behind the gate
    adorch policy explain why ads were denied for a request

Settings are read once here and passed down.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

from ad_orchestrator.settings import Settings, load_settings


def _run(args: argparse.Namespace) -> int:
    from ad_orchestrator.replay import format_summary, options_from, run_replay

    summary = run_replay(load_settings(), options_from(args))
    print(format_summary(summary))
    return 0 if summary["lost"] == 0 else 1


def _replay_openrtb(args: argparse.Namespace) -> int:
    from ad_orchestrator.app import runtime
    from ad_orchestrator.creatives import read_cache_stats
    from ad_orchestrator.replay_openrtb import format_reports, replay_folder

    settings = load_settings()
    reports = replay_folder(settings, args.folder, args.timeout)
    print(format_reports(reports, read_cache_stats(runtime().redis, settings)))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(reports, indent=2))
    return 0


def _celery(args: argparse.Namespace, command: str) -> int:
    settings = load_settings()
    from ad_orchestrator.app import app

    argv = [command, "--loglevel", settings.log_level]
    if command == "worker":
        argv += ["-E", "-Q", settings.queue, "-c", str(settings.worker_concurrency)]
        argv += ["-P", "prefork"]
        if args.beat:
            argv.append("-B")
    argv += list(args.celery_args)
    app.start(argv)
    return 0


def _redis(args: argparse.Namespace) -> int:
    from ad_orchestrator.redis_server import start_embedded, stop_embedded

    settings = load_settings()
    if args.action == "start":
        print(start_embedded(settings))
    else:
        print("stopped" if stop_embedded(settings) else "not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the `adorch` command-line parser."""
    from ad_orchestrator.replay import add_arguments
    from ad_orchestrator.replay_openrtb import add_arguments as add_openrtb_arguments

    parser = argparse.ArgumentParser(prog="adorch", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="replay the Open Bandit Dataset (main job)")
    add_arguments(run)
    run.set_defaults(func=_run)

    openrtb = commands.add_parser(
        "replay-openrtb", help="OpenRTB examples through the service, BidResponses out"
    )
    add_openrtb_arguments(openrtb)
    openrtb.set_defaults(func=_replay_openrtb)

    for name, text in (("worker", "a Celery worker"), ("beat", "Celery beat")):
        sub = commands.add_parser(name, help=text)
        if name == "worker":
            sub.add_argument("--beat", action="store_true", help="embed beat (dev)")
        else:
            sub.set_defaults(beat=False)
        sub.add_argument("celery_args", nargs=argparse.REMAINDER)
        sub.set_defaults(func=lambda a, n=name: _celery(a, n))

    flower = commands.add_parser("flower", help="Flower with basic auth")
    flower.add_argument("flower_args", nargs=argparse.REMAINDER)
    flower.set_defaults(
        func=lambda a: (
            importlib.import_module("ad_orchestrator.flower").main(a.flower_args) or 0
        )
    )

    redis_cmd = commands.add_parser("redis", help="start or stop the embedded Redis")
    redis_cmd.add_argument("action", choices=("start", "stop"))
    redis_cmd.set_defaults(func=_redis)

    # Commands owned by other modules register themselves.
    for module in ("ad_orchestrator.cli_weights", "policies.explain"):
        try:
            registrar = importlib.import_module(module)
        except ImportError:
            continue
        registrar.register(commands, load_settings)
    return parser


def _prepare_worker_metrics(settings: Settings) -> None:
    """Point a prefork worker's metrics at a shared folder, before they load.

    prometheus_client picks single- or multi-process mode when it is first
    imported, so the folder must be in the environment before anything imports it;
    pool children then write their samples there and the worker's exporter (on
    `ADORCH_METRICS_PORT`, 9808 by default here) serves them all.
    """
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        folder = settings.state_dir / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    os.environ.setdefault("ADORCH_METRICS_PORT", "9808")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `adorch` command and return its exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == ["worker"]:
        _prepare_worker_metrics(load_settings())
    args = build_parser().parse_args(words)
    settings: Settings = load_settings()
    from ad_orchestrator.logging import configure_logging

    if args.command not in ("worker", "beat", "flower"):
        configure_logging(settings, "cli")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
