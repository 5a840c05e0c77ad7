"""Start, find and stop real Celery worker processes (for the replay and tests).

A worker is always a separate `celery worker` process on the configured queue, with
the same settings as its parent and the Redis URL its parent resolved, so that a
parent running on the embedded Redis and its worker share the same server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from ad_orchestrator.errors import AdOrchestratorError
from ad_orchestrator.settings import REPO_ROOT


class WorkerError(AdOrchestratorError):
    """A worker process could not be started or did not answer."""


@dataclass
class WorkerProcess:
    """A `celery worker` process this program started."""

    process: subprocess.Popen[bytes]
    logfile: Path
    node: str

    def log_text(self) -> str:
        """Return what the worker logged so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the worker (warm shutdown, then kill after `timeout`)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def workers_answering(app: Celery, queue: str, timeout: float = 1.0) -> list[str]:
    """Return the names of the workers that consume `queue` and answer.

    A ping alone is not enough: every worker on the broker answers it, including
    workers of other queues that would never take this queue's tasks.
    """
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return sorted(
        name
        for name, queues in replies.items()
        if any(q.get("name") == queue for q in queues or [])
    )


def start_worker(
    app: Celery,
    name: str,
    *,
    queue: str,
    logdir: Path,
    concurrency: int = 2,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    wait_s: float = 60.0,
) -> WorkerProcess:
    """Start a prefork worker on `queue` and wait until it answers a ping."""
    env = dict(os.environ, **(extra_env or {}))
    env["ADORCH_REDIS_URL"] = getattr(
        app, "adorch_redis_url", env.get("ADORCH_REDIS_URL", "")
    )
    logdir.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"{name}.log"
    node = f"{name}-{os.getpid()}@localhost"
    command = [
        sys.executable, "-m", "celery", "-A", "ad_orchestrator.app", "worker",
        "-P", "prefork", "-c", str(concurrency), "-Q", queue, "-n", node, "-E",
        "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        "--logfile", str(logfile), *(extra_args or []),
    ]  # fmt: skip
    with logfile.open("ab") as sink:  # the child keeps its own copy of the handle
        process = subprocess.Popen(  # noqa: S603
            command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    worker = WorkerProcess(process, logfile, node)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WorkerError(
                f"worker {node} exited at start; its log:\n{worker.log_text()[-3000:]}"
            )
        if app.control.ping(destination=[node], timeout=0.5):
            return worker
    worker.stop()
    raise WorkerError(f"worker {node} did not answer within {wait_s:.0f} s")
