"""Start Flower, the Celery monitor, against the service's broker, behind a password.

`make flower` (or `python -m ad_orchestrator.flower`) runs
`celery -A ad_orchestrator.app flower` so Flower reads the same broker and
serialisation settings as the workers. Credentials come from settings
(`ADORCH_FLOWER_USER`, `ADORCH_FLOWER_PASSWORD`) and reach Flower through its
`FLOWER_BASIC_AUTH` environment variable, never the command line (which every
local user can read in `ps`). Without a password the launcher refuses to start,
unless `--dev` is given, and even then only on a loopback address.

Flower shows tasks only if workers send events: start them with `-E` (the
Makefile, compose file and Helm chart do) and keep `task_send_sent_event` on.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.settings import Settings

logger = logging.getLogger(__name__)

APP_MODULE = "ad_orchestrator.app"
DEFAULT_PORT = 5555


@dataclass(frozen=True, kw_only=True)
class FlowerLaunch:
    """What to execute to start Flower: the argument vector and extra environment.

    `env` holds the credentials; `repr` hides them.
    """

    argv: list[str]
    env: dict[str, str]

    def __repr__(self) -> str:
        shown = {k: ("***" if "AUTH" in k else v) for k, v in self.env.items()}
        return f"FlowerLaunch(argv={self.argv!r}, env={shown!r})"


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def build_launch(
    settings: Settings,
    *,
    address: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    dev: bool = False,
    app_module: str = APP_MODULE,
    extra_args: Sequence[str] = (),
) -> FlowerLaunch:
    """Return how to start Flower for these settings, or refuse with the reason.

    Args:
        settings: Supplies `flower_user` and `flower_password`.
        address: Address Flower listens on.
        port: Port Flower listens on.
        dev: Allow starting without a password, on a loopback address only.
        app_module: The Celery app Flower attaches to.
        extra_args: More Flower options, passed through unchanged.

    Raises:
        ConfigError: If no password is set and `dev` is off, if `dev` is asked
            for on a non-loopback address, or if the credentials contain a
            character Flower's option parser would split on.
    """
    if not 0 < port < 65536:
        raise ConfigError(f"Flower port must be in 1..65535, but got {port}")
    password = (
        settings.flower_password.get_secret_value() if settings.flower_password else ""
    )
    user = settings.flower_user
    env: dict[str, str] = {}
    if password:
        if not user or ":" in user or "," in user:
            raise ConfigError(
                f"flower_user must be a non-empty name without ':' or ',', but got "
                f"{user!r}; fix ADORCH_FLOWER_USER"
            )
        if "," in password:
            raise ConfigError(
                "flower_password must not contain ',' (Flower splits its "
                "basic-auth option on commas); choose another ADORCH_FLOWER_PASSWORD"
            )
        env["FLOWER_BASIC_AUTH"] = f"{user}:{password}"
    elif not dev:
        raise ConfigError(
            "Flower would start without authentication: set ADORCH_FLOWER_PASSWORD "
            "(and ADORCH_FLOWER_USER), or pass --dev to run it open on loopback "
            "for local development"
        )
    elif not _is_loopback(address):
        raise ConfigError(
            f"--dev without a password is allowed on a loopback address only, but "
            f"got {address!r}; set ADORCH_FLOWER_PASSWORD to listen there"
        )
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_module,
        "flower",
        f"--address={address}",
        f"--port={port}",
        *extra_args,
    ]
    return FlowerLaunch(argv=argv, env=env)


def launch_environment(
    launch: FlowerLaunch, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the environment to run `launch` in: `base` plus its credentials.

    A `FLOWER_BASIC_AUTH` already in `base` is dropped, so only settings decide
    who may log in.
    """
    env = {k: v for k, v in (base or os.environ).items() if k != "FLOWER_BASIC_AUTH"}
    env.update(launch.env)
    return env


def main(argv: Sequence[str] | None = None) -> None:
    """Replace this process with Flower (what `make flower` runs)."""
    parser = argparse.ArgumentParser(
        prog="python -m ad_orchestrator.flower",
        description="Start Flower on the service's broker with basic auth from "
        "settings (ADORCH_FLOWER_USER / ADORCH_FLOWER_PASSWORD).",
    )
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--dev",
        action="store_true",
        help="Allow no password, on a loopback address only.",
    )
    args, extra = parser.parse_known_args(argv)

    from ad_orchestrator.logging import configure_logging
    from ad_orchestrator.settings import load_settings

    settings = load_settings()
    configure_logging(settings, "flower")
    try:
        launch = build_launch(
            settings,
            address=args.address,
            port=args.port,
            dev=args.dev,
            extra_args=extra,
        )
    except ConfigError as error:
        parser.exit(2, f"refusing to start Flower: {error}\n")
    logger.info(
        "starting Flower on http://%s:%d (auth: %s)",
        args.address,
        args.port,
        "basic" if launch.env else "none, --dev",
    )
    os.execve(launch.argv[0], launch.argv, launch_environment(launch))  # noqa: S606


if __name__ == "__main__":
    main()
