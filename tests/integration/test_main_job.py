"""The main job and a plain shell, run the way a user runs them.

Each test starts real processes: the `adorch run` replay (which starts its own
worker), or a separate Python process calling `gather_results.delay(...).get()`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ad_orchestrator.app import create_app
from ad_orchestrator.redis_server import stop_embedded
from ad_orchestrator.settings import REPO_ROOT, Settings, load_settings
from ad_orchestrator.workers import start_worker

pytestmark = pytest.mark.integration


def test_the_replay_runs_on_an_embedded_redis(tmp_path: Path) -> None:
    """With no Redis configured, `adorch run` embeds one and loses no request."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADORCH_")}
    env.update(
        ADORCH_REDIS_MODE="embedded",
        ADORCH_STATE_DIR=str(tmp_path / "state"),
        ADORCH_LOG_JSON="false",
    )
    out = tmp_path / "summary.json"
    try:
        run = subprocess.run(
            [sys.executable, "-m", "ad_orchestrator.cli", "run", "--rows", "300",
             "--batch-size", "50", "--out", str(out)],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    finally:
        stop_embedded(Settings(state_dir=tmp_path / "state"))

    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["redis"] == "embedded"
    assert (summary["requests"], summary["decisions"], summary["lost"]) == (300, 300, 0)
    assert "service CTR, SNIPW" in run.stdout
    assert "logging policy CTR" in run.stdout


SHELL_SNIPPET = """
from ad_orchestrator.app import gather_results
decision = gather_results.delay({
    "request_id": "shell-1", "timestamp": "2019-11-25T10:00:00Z",
    "slots": [{"slot_id": "s1"}],
    "candidates": [{"ad_id": "a1", "campaign_id": "obd-all"}],
}).get(timeout=5)
print(type(decision).__name__, decision.request_id, decision.outcome)
"""


def test_a_plain_python_shell_gets_a_decision(celery_worker: object) -> None:
    """`gather_results.delay(request).get(timeout=5)` from another process."""
    run = subprocess.run(
        [sys.executable, "-c", SHELL_SNIPPET],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["Decision", "shell-1", "bid"]


def _rabbitmq_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbitmq_answers(), reason="no RabbitMQ on 127.0.0.1:5672")
def test_rabbitmq_can_be_the_broker_with_redis_for_results(tmp_path: Path) -> None:
    """ADORCH_BROKER_URL moves messages to RabbitMQ; results stay on Redis."""
    queue = f"{os.environ['ADORCH_QUEUE']}-amqp"
    env = {"ADORCH_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
           "ADORCH_QUEUE": queue}  # fmt: skip
    # The worker answers pings on its own broker, so ask through an app on it.
    amqp_app = create_app(load_settings(broker_url=env["ADORCH_BROKER_URL"]))
    worker = start_worker(amqp_app, "amqp", queue=queue, logdir=tmp_path, extra_env=env)
    try:
        run = subprocess.run(
            [sys.executable, "-c", SHELL_SNIPPET.replace("shell-1", "amqp-1")],
            cwd=REPO_ROOT, env=dict(os.environ, **env),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        worker.stop()

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["Decision", "amqp-1", "bid"]
    assert "amqp://" in worker.log_text()
