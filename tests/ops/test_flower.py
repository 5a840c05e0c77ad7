"""The Flower launcher: credentials from settings, refusal without them."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from ad_orchestrator import flower
from ad_orchestrator.errors import ConfigError
from ad_orchestrator.logging import reset_logging
from ad_orchestrator.settings import Settings


def _settings(password: str | None, user: str = "ops") -> Settings:
    return Settings(
        flower_user=user,
        flower_password=SecretStr(password) if password is not None else None,
    )


def test_credentials_travel_in_the_environment_not_argv() -> None:
    """Basic auth reaches Flower through FLOWER_BASIC_AUTH; argv never has it."""
    launch = flower.build_launch(_settings("s3cret"), port=5601)

    assert launch.env == {"FLOWER_BASIC_AUTH": "ops:s3cret"}
    assert not any("s3cret" in part for part in launch.argv)
    assert "s3cret" not in repr(launch)
    assert launch.argv[1:6] == ["-m", "celery", "-A", "ad_orchestrator.app", "flower"]
    assert "--port=5601" in launch.argv


def test_dev_flag_allows_no_password_on_loopback() -> None:
    """`--dev` starts an open Flower, but only on a loopback address."""
    launch = flower.build_launch(_settings(None), address="127.0.0.1", dev=True)

    assert launch.env == {}


def test_environment_drops_a_foreign_basic_auth() -> None:
    """Only settings decide who logs in, not a stray FLOWER_BASIC_AUTH."""
    launch = flower.build_launch(_settings(None), dev=True)

    env = flower.launch_environment(launch, {"FLOWER_BASIC_AUTH": "x:y", "A": "1"})

    assert env == {"A": "1"}


@pytest.mark.parametrize(
    ("settings", "kwargs", "message"),
    [
        (_settings(None), {}, "without authentication: set ADORCH_FLOWER_PASSWORD"),
        (_settings(""), {}, "without authentication"),
        (
            _settings(None),
            {"dev": True, "address": "0.0.0.0"},  # noqa: S104 - the case refused
            "loopback address only",
        ),
        (_settings("a,b"), {}, "must not contain ','"),
        (_settings("pw", user="a:b"), {}, "flower_user must be a non-empty name"),
        (_settings("pw"), {"port": 0}, "port must be in 1..65535"),
    ],
)
def test_unsafe_launches_are_refused(
    settings: Settings, kwargs: dict[str, object], message: str
) -> None:
    """Each unsafe or malformed configuration is refused with its reason."""
    with pytest.raises(ConfigError, match=message):
        flower.build_launch(settings, **kwargs)  # type: ignore[arg-type]


def test_main_exits_with_the_reason_when_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line refuses to start and says why (exit status 2)."""
    monkeypatch.delenv("ADORCH_FLOWER_PASSWORD", raising=False)
    monkeypatch.setattr(flower.os, "execve", pytest.fail)

    try:
        with pytest.raises(SystemExit) as stopped:
            flower.main(["--port", "5602"])
    finally:
        reset_logging()

    assert stopped.value.code == 2
    assert "refusing to start Flower" in capsys.readouterr().err
