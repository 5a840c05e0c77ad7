"""Structured logging: JSON lines, bound context, hashed identifiers, one setup."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from ad_orchestrator import logging as adlog
from ad_orchestrator.errors import ConfigError

SALT = b"test-salt"


def _settings(**overrides: object) -> SimpleNamespace:
    values = {"log_level": "INFO", "log_json": True}
    values.update(overrides)
    return SimpleNamespace(**values, secret=lambda name: SALT)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    adlog.reset_logging()
    yield
    adlog.reset_logging()


def _lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


def test_hash_id_is_stable_keyed_and_hides_the_value() -> None:
    """The same id and salt hash alike; another salt differs; the raw id is gone."""
    first = adlog.hash_id("user-42", SALT)

    assert first == adlog.hash_id("user-42", SALT)
    assert first != adlog.hash_id("user-42", b"other")
    assert first is not None and "user-42" not in first and len(first) == 32
    assert adlog.hash_id(None, SALT) is None


def test_hash_id_refuses_an_empty_salt() -> None:
    """An empty salt would make hashes guessable, so it is an error."""
    with pytest.raises(ConfigError, match="non-empty salt"):
        adlog.hash_id("user-42", b"")


def test_json_line_carries_context_and_hashes_user_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A line inside `log_context` has the decision's fields and no raw user id."""
    adlog.configure_logging(_settings(), "worker")
    log = logging.getLogger("adorch.test")

    with adlog.log_context(request_id="r-1", decision_id="d-1", agent="budget"):
        log.info("bid %s", "placed", extra={"weights_version": "7", "user_id": "u9"})

    (line,) = _lines(capsys.readouterr().err)
    assert line["message"] == "bid placed"
    assert line["level"] == "INFO"
    assert line["entry_point"] == "worker"
    assert (line["request_id"], line["decision_id"], line["agent"]) == (
        "r-1",
        "d-1",
        "budget",
    )
    assert line["weights_version"] == "7"
    assert line["user_id"] == adlog.hash_id("u9", SALT)


def test_context_nests_and_is_restored(capsys: pytest.CaptureFixture[str]) -> None:
    """Inner blocks override fields; leaving them brings the outer ones back."""
    adlog.configure_logging(_settings(), "web")
    log = logging.getLogger("adorch.test")

    with adlog.log_context(request_id="outer", agent="context"):
        with adlog.log_context(agent="policy"):
            log.info("inner")
        log.info("outer")
    log.info("none")

    inner, outer, none = _lines(capsys.readouterr().err)
    assert (inner["request_id"], inner["agent"]) == ("outer", "policy")
    assert outer["agent"] == "context"
    assert "request_id" not in none and "agent" not in none


def test_second_configuration_is_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    """Calling configure twice keeps one handler and the first entry point."""
    adlog.configure_logging(_settings(), "web")
    adlog.configure_logging(_settings(), "cli")
    logging.getLogger("adorch.test").error("once")

    lines = _lines(capsys.readouterr().err)
    assert [line["message"] for line in lines][-1] == "once"
    assert lines[-1]["entry_point"] == "web"
    assert sum(h.get_name() == "adorch" for h in logging.getLogger().handlers) == 1


def test_plain_format_when_json_is_off(capsys: pytest.CaptureFixture[str]) -> None:
    """`log_json=False` prints readable text with the context appended."""
    adlog.configure_logging(_settings(log_json=False), "cli")

    with adlog.log_context(request_id="r-7"):
        logging.getLogger("adorch.test").warning("slow")

    err = capsys.readouterr().err
    assert "WARNING adorch.test: slow [request_id=r-7]" in err


@pytest.mark.parametrize(
    ("entry_point", "settings", "message"),
    [
        ("daemon", _settings(), "entry_point must be one of"),
        ("web", _settings(log_level="LOUD"), "log_level must be a logging level"),
    ],
)
def test_bad_configuration_is_refused(
    entry_point: str, settings: SimpleNamespace, message: str
) -> None:
    """Unknown entry points and level names are errors that say what to fix."""
    with pytest.raises(ConfigError, match=message):
        adlog.configure_logging(settings, entry_point)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["celery", "-A", "ad_orchestrator.app", "worker", "-E"], "worker"),
        (["celery", "-A", "ad_orchestrator.app", "beat"], "beat"),
    ],
)
def test_celery_entry_point_is_read_from_the_command(
    argv: list[str], expected: str
) -> None:
    """Workers and beat label their lines by the Celery sub-command."""
    assert adlog._celery_entry_point(argv) == expected
