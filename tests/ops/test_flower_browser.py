"""Flower in a real headless browser: the worker and the agent tasks show up.

Starts a real worker (task events on) and Flower through our launcher (basic auth
from settings) on loopback, sends real decisions, and reads Flower's pages with
Debian's Chromium driven by Selenium. Saves `artifacts/flower.png` (the task list)
and `artifacts/flower-workers.png`.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ad_orchestrator.settings import REPO_ROOT, load_settings
from ad_orchestrator.workers import WorkerProcess, start_worker
from examples.web.launch import free_port
from examples.web.samples import sample_ad_request

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()
ARTIFACTS = REPO_ROOT / "artifacts"
USER, PASSWORD = "ops", "flower-test-pw"
AGENT_TASKS = [f"adorch.agent.{a}" for a in ("context", "content", "budget", "policy")]


def _wait_http(url: str, auth: tuple[str, str], wait_s: float = 60.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, auth=auth, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {wait_s:.0f} s")


@pytest.fixture(scope="module")
def flower_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, WorkerProcess]]:
    from ad_orchestrator.app import app

    queue = f"{os.environ['ADORCH_QUEUE']}-flower"
    logs = tmp_path_factory.mktemp("flower-logs")
    env = {"ADORCH_QUEUE": queue}
    worker = start_worker(app, "flower", queue=queue, logdir=logs, extra_env=env)
    port = free_port()
    flower_env = dict(
        os.environ,
        ADORCH_QUEUE=queue,
        ADORCH_FLOWER_USER=USER,
        ADORCH_FLOWER_PASSWORD=PASSWORD,
    )
    log = (logs / "flower.log").open("wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "ad_orchestrator.flower", "--port", str(port)],
        cwd=REPO_ROOT,
        env=flower_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/healthcheck", (USER, PASSWORD))
        # Flower only sees tasks sent after it subscribed to events: send now.
        from ad_orchestrator.client import decide

        settings = load_settings(queue=queue)
        for _ in range(3):
            decide(sample_ad_request(tmax_ms=60_000), settings=settings)
        yield url, worker
    finally:
        flower.terminate()
        flower.wait(15)
        log.close()
        worker.stop()


def test_flower_refuses_requests_without_the_password(
    flower_stack: tuple[str, WorkerProcess],
) -> None:
    """Basic auth from settings guards the pages; the right password opens them."""
    url, _worker = flower_stack

    def status(auth: tuple[str, str] | None) -> int:
        return httpx.get(f"{url}/workers", auth=auth, timeout=5).status_code

    assert status(None) == 401
    # Flower's health endpoint stays open, for the Kubernetes probes.
    assert httpx.get(f"{url}/healthcheck", timeout=5).status_code == 200
    assert status((USER, "wrong")) == 401
    assert status((USER, PASSWORD)) == 200


@pytest.mark.skipif(
    not HAVE_BROWSER,
    reason="Debian's chromium and chromium-driver are not installed "
    "(apt-get install chromium chromium-driver)",
)
def test_worker_and_agent_tasks_appear_in_the_browser(
    flower_stack: tuple[str, WorkerProcess],
) -> None:
    """The headless browser sees the worker and every agent task by name."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    url, worker = flower_stack
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders",
            {"headers": {"Authorization": f"Basic {token}"}},
        )
        driver.get(f"{url}/workers")
        WebDriverWait(driver, 30).until(lambda d: worker.node in d.page_source)
        driver.save_screenshot(str(ARTIFACTS / "flower-workers.png"))

        driver.get(f"{url}/tasks")
        WebDriverWait(driver, 30).until(
            lambda d: all(name in d.page_source for name in AGENT_TASKS)
        )
        page = driver.page_source
        driver.save_screenshot(str(ARTIFACTS / "flower.png"))
    finally:
        driver.quit()

    assert "adorch.reduce" in page
    assert worker.node in page
    assert (ARTIFACTS / "flower.png").stat().st_size > 10_000
