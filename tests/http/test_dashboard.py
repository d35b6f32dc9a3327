"""The dashboard in a real headless Chromium: it loads with no console error, asks for the API
key, shows the pool, its device and a worker, and updates when a job runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from .conftest import KEY, MODEL, Edge

SHOT_ENV = "LLORCH_DASHBOARD_SHOT"  # where to keep the screenshot (docs/img/dashboard.png)
# As root in a container with no network: no sandbox, no GPU, nothing fetched in the background
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def chromium(playwright_path: str) -> str:
    """Playwright's own Chromium when it was downloaded, else Debian's. Neither is a failure,
    not a skip: the dashboard must be tested (README: `apt-get install chromium`)."""
    if Path(playwright_path).is_file():
        return playwright_path
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no Chromium: `apt-get install -y chromium` (Debian) or `playwright install`")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        path = chromium(p.chromium.executable_path)
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_the_dashboard_shows_the_cluster_and_follows_a_job(edge: Edge, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1366, "height": 820})  # a laptop's screen
    problems: list[str] = []
    page.on("console", lambda m: _keep_errors(m, problems))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(edge.url)
    _log_in(page)
    pool = page.locator("[data-pool]")
    pool.wait_for()
    assert "alive" in pool.inner_text()
    assert page.locator("[data-device='0']").count() == 1
    assert "used" in page.locator("[data-device='0']").inner_text()

    answer = edge.openai().completions.create(model=MODEL, prompt="Hello", max_tokens=8)
    job_id = answer.id.removeprefix("cmpl-")
    row = page.locator(f"#recent [data-job='{job_id}']")
    row.wait_for()  # the page polls: the job appears once it ended
    cells = row.locator("td").all_inner_texts()
    assert cells[1] == MODEL and cells[2] == "finished" and cells[3].endswith(" ms")
    assert cells[4].endswith("→ 8")
    worker = page.locator("[data-worker]").first.locator("td").all_inner_texts()
    assert worker[1] == MODEL and worker[4].endswith(" of 1")  # slots busy, of its one slot
    assert page.locator("#rate").inner_text().endswith("tok/s")
    assert " · leader orch-" in page.locator("#updated").inner_text()  # who answered, how long
    if shot := os.environ.get(SHOT_ENV):
        page.screenshot(path=shot, full_page=True)
    assert problems == []
    page.close()


def _log_in(page: Page) -> None:
    """The page asks for the key (the edge has keys), and keeps it for the session."""
    page.locator("#login").wait_for()
    page.fill("#key", KEY)
    page.click("#login button")
    page.locator("#login").wait_for(state="hidden")


def _keep_errors(message: ConsoleMessage, problems: list[str]) -> None:
    # The first poll, before the key is given, is refused by design: its 401 is no error.
    if message.type == "error" and "401" not in message.text:
        problems.append(message.text)
