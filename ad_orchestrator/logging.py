"""Structured logging for every entry point: one JSON object per line.

Library modules only ever do `logger = logging.getLogger(__name__)`. An entry point
(worker, web app, CLI, metrics exporter) calls `configure_logging(settings, name)`
once, which installs one handler on the root logger with two filters:

- `ContextFilter` copies the decision's context (`request_id`, `decision_id`,
  `agent`, `weights_version`, and the Celery task id and name when inside a task)
  onto every record, from `log_context(...)` blocks or `extra=`;
- `IdentifierFilter` replaces user identifiers (`user_id`, `ifa`, `ip`) passed in
  `extra=` by a keyed hash, so no raw identifier reaches a log line.

A Celery worker would replace the root handlers with its own unless told not to:
`connect_celery_logging(settings)` hooks Celery's `setup_logging` signal so the
worker is configured by this module instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any, Protocol

from pythonjsonlogger.json import JsonFormatter

from ad_orchestrator.errors import ConfigError

logger = logging.getLogger(__name__)

SERVICE = "ad-orchestrator"
CONTEXT_FIELDS = ("request_id", "decision_id", "agent", "weights_version")
IDENTIFIER_FIELDS = ("user_id", "ifa", "ip")
ENTRY_POINTS = frozenset({"worker", "beat", "web", "cli", "flower", "metrics", "test"})

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar(
    "adorch_log_context", default=_EMPTY
)
_configured_for: str | None = None
_HANDLER_NAME = "adorch"


class _LoggingSettings(Protocol):
    log_level: str
    log_json: bool

    def secret(self, name: Any) -> bytes: ...


def hash_id(value: str | None, salt: bytes) -> str | None:
    """Return a stable keyed hash of a user identifier, safe to log.

    The same identifier and salt always give the same 32 hex digits, so log lines
    about one user can still be joined, but the identifier cannot be recovered
    without the salt (HMAC-SHA256, truncated).

    Args:
        value: The identifier; `None` or an empty string stays `None`.
        salt: The deployment's secret salt (`settings.secret("id_salt")`).

    Raises:
        ConfigError: If `salt` is empty, which would make the hash reversible by
            brute force over known identifiers.
    """
    if not salt:
        raise ConfigError(
            "hash_id needs a non-empty salt, but got an empty one; set "
            "ADORCH_ID_SALT or let settings.secret('id_salt') create one"
        )
    if value is None or value == "":
        return None
    digest = hmac.new(salt, str(value).encode(), hashlib.sha256).hexdigest()
    return digest[:32]


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach fields (request id, decision id, agent, ...) to every log line inside.

    Blocks nest: inner fields add to and override outer ones, and the outer
    context comes back on exit. Context variables follow asyncio tasks and
    threads started with `contextvars.copy_context`.
    """
    bound = {k: v for k, v in fields.items() if v is not None}
    merged = MappingProxyType({**_context.get(), **bound})
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    """Return a copy of the fields `log_context` has bound at this point."""
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copy the bound decision context and the current Celery task onto records.

    Fields given with `extra=` win over the bound context. The filter never drops
    a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add context attributes to `record` and keep it."""
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        task = _current_celery_task()
        if task is not None:
            request = getattr(task, "request", None)
            task_id = getattr(request, "id", None)
            if task_id and not hasattr(record, "task_id"):
                record.task_id = task_id
                record.task_name = task.name
        return True


def _current_celery_task() -> Any:
    celery_state = sys.modules.get("celery._state")
    if celery_state is None:
        return None
    return celery_state.get_current_task()


class IdentifierFilter(logging.Filter):
    """Replace user identifiers given as record attributes by their keyed hash.

    Args:
        salt: The deployment's secret salt.
        fields: Attribute names holding identifiers.
    """

    def __init__(self, salt: bytes, fields: tuple[str, ...] = IDENTIFIER_FIELDS):
        super().__init__()
        if not salt:
            raise ConfigError("IdentifierFilter needs a non-empty salt")
        self._salt = salt
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        """Hash identifier attributes in place and keep the record."""
        for name in self._fields:
            value = getattr(record, name, None)
            if value is not None and not getattr(record, f"_{name}_hashed", False):
                setattr(record, name, hash_id(str(value), self._salt))
                setattr(record, f"_{name}_hashed", True)
        return True


class _PlainFormatter(logging.Formatter):
    """Readable one-line format for development, with the context appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{name}={getattr(record, name)}"
            for name in (*CONTEXT_FIELDS, "task_name", *IDENTIFIER_FIELDS)
            if getattr(record, name, None) is not None
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


def build_formatter(json_lines: bool, entry_point: str) -> logging.Formatter:
    """Return the formatter an entry point uses: JSON lines or plain text."""
    if not json_lines:
        return _PlainFormatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s %(process)d",
        rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
        static_fields={"service": SERVICE, "entry_point": entry_point},
        timestamp=True,
    )


def configure_logging(settings: _LoggingSettings, entry_point: str) -> None:
    """Install the service's logging on the root logger, once per process.

    Args:
        settings: Provides `log_level`, `log_json` and the `id_salt` secret.
        entry_point: Who is running: one of `ENTRY_POINTS`; written on every line.

    Raises:
        ConfigError: If `entry_point` or `settings.log_level` is unknown.
    """
    global _configured_for
    if entry_point not in ENTRY_POINTS:
        raise ConfigError(
            f"entry_point must be one of {sorted(ENTRY_POINTS)}, but got "
            f"{entry_point!r}; name the process that is starting"
        )
    level = logging.getLevelName(str(settings.log_level).upper())
    if not isinstance(level, int):
        raise ConfigError(
            f"log_level must be a logging level name such as INFO, but got "
            f"{settings.log_level!r}; fix ADORCH_LOG_LEVEL"
        )
    if _configured_for is not None:
        if _configured_for != entry_point:
            logger.warning(
                "logging already configured for %s; ignoring a second call from %s",
                _configured_for,
                entry_point,
            )
        return

    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(build_formatter(settings.log_json, entry_point))
    handler.addFilter(ContextFilter())
    handler.addFilter(IdentifierFilter(settings.secret("id_salt")))

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs its own plain handlers before the app is imported; route its
    # lines through ours so the web process writes JSON only.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    # Access logs of every request would drown the decisions' own lines.
    logging.getLogger("uvicorn.access").setLevel(max(level, logging.WARNING))
    _configured_for = entry_point
    logger.debug("logging configured for %s", entry_point)


def reset_logging() -> None:
    """Forget a previous `configure_logging` call (tests only)."""
    global _configured_for
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    _configured_for = None


def connect_celery_logging(
    settings: _LoggingSettings, entry_point: str | None = None
) -> None:
    """Make Celery leave logging to `configure_logging` in workers and beat.

    Connecting any receiver to `celery.signals.setup_logging` stops Celery from
    installing its own root handlers; the receiver configures ours instead.

    Args:
        settings: As for `configure_logging`.
        entry_point: Name written on each line; by default `beat` when the
            process was started as `celery ... beat`, else `worker`.
    """
    from celery.signals import setup_logging

    def _configure(**_: Any) -> None:
        configure_logging(settings, entry_point or _celery_entry_point(sys.argv))

    setup_logging.connect(_configure, weak=False)


def _celery_entry_point(argv: list[str]) -> str:
    for word in argv[1:]:
        if word in {"beat", "flower"}:
            return word
    return "worker"
