"""Start the web example as a real uvicorn process on loopback (tests, benchmark)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ad_orchestrator.errors import AdOrchestratorError
from ad_orchestrator.settings import REPO_ROOT


class WebServerError(AdOrchestratorError):
    """The web example did not start or did not answer `/healthz`."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class WebServer:
    """A running `uvicorn examples.web.app:app` process."""

    process: subprocess.Popen[bytes]
    url: str
    logfile: Path

    def log_text(self) -> str:
        """Return what the server logged so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then kill after `timeout`)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_web(
    logfile: Path,
    *,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    wait_s: float = 60.0,
) -> WebServer:
    """Start the web example on 127.0.0.1 and wait until `/healthz` answers.

    The server inherits this process's environment (so its `ADORCH_` settings),
    with `extra_env` on top.
    """
    port = port or free_port()
    env = dict(os.environ, **(extra_env or {}))
    logfile.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "uvicorn", "examples.web.app:app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    with logfile.open("ab") as sink:
        process = subprocess.Popen(  # noqa: S603 - our own server, fixed argv
            command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    server = WebServer(process, f"http://127.0.0.1:{port}", logfile)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WebServerError(
                f"web example exited at start; its log:\n{server.log_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{server.url}/healthz", timeout=0.5).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.1)
    server.stop()
    raise WebServerError(f"web example did not answer within {wait_s:.0f} s")
