"""The operations console in a real headless Chromium (Debian's package, driven by
Playwright), against a real server, Redis, worker and sandbox: log in, find a failed
cancellation, preview and confirm its replay, and watch it become pending.

A screenshot of each page goes to ``.test-output/console/`` at the project root. Without
Chromium (``/usr/bin/chromium``, or ``CHROMIUM`` naming another), these tests are skipped
with a line that says so; ``.ci/run`` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adjustments import Producer
from adjustments.sandbox import SandboxServer
from tests.helpers import TOKENS, Server, create_record

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".test-output" / "console"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network and a root user: no sandbox, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(browser: Any, server: Server, role: str) -> Any:
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.goto(f"{server.url}/console")
    sync_api.expect(page).to_have_url(f"{server.url}/console/login")
    page.fill("#token", TOKENS[role])
    page.click("button[type=submit]")
    sync_api.expect(page).to_have_url(f"{server.url}/console")
    return page


def test_an_operator_replays_a_failed_cancellation_in_the_browser(
    browser: Any,
    http_server: Server,
    producer: Producer,
    sandbox: SandboxServer,
    settle: Any,
) -> None:
    """Log in as an operator, see the failed cancellation on the overview and in the failed
    list, open it, preview its replay (one record), confirm, and watch it become pending."""
    server = http_server
    sandbox.logic.script("br_1", ["400"])  # fails once; the replay's attempt is accepted
    record = producer.cancel("meter_api", "br_1", api="v1")
    for i in range(3):
        producer.cancel("meter_api", f"br_ok_{i}", api="v2")
    assert settle(record.id).status.value == "failed"

    login = browser.new_page(viewport={"width": 1200, "height": 800})
    login.goto(f"{server.url}/console")
    shot(login, "login")
    login.close()
    page = log_in(browser, server, "operate")
    sync_api.expect(page.locator('[data-status="failed"]')).to_have_text("1")
    shot(page, "overview")

    page.click("text=Failed")
    row = page.locator(f'a[href="/console/records/{record.id}"]')
    sync_api.expect(row).to_be_visible()
    shot(page, "failed-list")
    row.click()
    sync_api.expect(page.locator("#status")).to_have_text("failed")
    sync_api.expect(page.locator("text=parameter_invalid").first).to_be_visible()
    shot(page, "record-failed")

    page.click("#replay-one")
    sync_api.expect(page.locator("#preview-count")).to_contain_text("1 record(s) would be replayed")
    assert producer.get(record.id).status.value == "failed"  # a preview changes nothing
    shot(page, "replay-preview")
    page.click("#confirm")
    sync_api.expect(page.locator("#replayed-count")).to_contain_text("1 record(s) replayed")
    shot(page, "replay-done")

    assert settle(record.id).status.value == "pending"
    page.goto(f"{server.url}/console/records/{record.id}")
    sync_api.expect(page.locator("#status")).to_have_text("pending")
    # The 400 is history now: labelled as an earlier attempt's, not shown as current.
    sync_api.expect(page.locator("#last-error h2")).to_have_text("An earlier attempt's error")
    shot(page, "record-pending")
    page.close()


def test_a_read_session_sees_everything_and_is_offered_no_change(
    browser: Any, http_server: Server, producer: Producer, sandbox: SandboxServer, settle: Any
) -> None:
    """A read token's session shows the failed record but no replay button anywhere."""
    sandbox.logic.script("br_read", ["400"])
    record = producer.cancel("meter_api", "br_read", api="v1")
    assert settle(record.id).status.value == "failed"
    page = log_in(browser, http_server, "read")
    page.goto(f"{http_server.url}/console/records?status=failed")
    sync_api.expect(page.locator(f'a[href="/console/records/{record.id}"]')).to_be_visible()
    assert page.locator("#replay-filtered").count() == 0
    page.goto(f"{http_server.url}/console/records/{record.id}")
    sync_api.expect(page.locator("#status")).to_have_text("failed")
    assert page.locator("#replay-one").count() == 0
    page.close()


TIME = r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$"


def test_the_console_reads_well_for_an_operator_on_call(
    browser: Any, http_server: Server, producer: Producer, settle: Any
) -> None:
    """What an operator found (issue 18): the record page names its fields in words, shows
    no empty rows and one time format that does not wrap; lists say how many records they
    show; a bad filter keeps the form and says what is wrong; the expired-replay box sits
    beside its label and submitting it unticked says why nothing happened; the workers tile
    says what busy threads are doing; nothing overflows a 420 px screen."""
    from datetime import UTC, datetime, timedelta

    from adjustments.models import CancelRequest

    now = datetime.now(UTC)
    old = CancelRequest("v1", "meter_api", "br_expired", None, now - timedelta(hours=25))
    record = create_record(producer, old, now=now)
    assert settle(record.id).status.value == "expired"
    page = log_in(browser, http_server, "operate")
    base = http_server.url

    page.goto(f"{base}/console/records/{record.id}")
    labels = page.locator("dl.fields dt").all_inner_texts()
    assert "Event name" in labels and "event_name" not in labels
    assert all(text.strip() for text in page.locator("dl.fields dd").all_inner_texts())
    times = page.locator(".t").all_inner_texts()
    assert times and all(re.match(TIME, t.strip()) for t in times), times
    assert page.locator(".t").first.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"

    page.click("#replay-one")
    box, label = page.locator("#force"), page.locator("label.check span")
    box_at, label_at = box.bounding_box(), label.bounding_box()
    assert box_at and label_at
    assert abs((box_at["y"] + box_at["height"] / 2) - (label_at["y"] + label_at["height"] / 2)) < 8
    assert box_at["x"] < label_at["x"]  # beside its label, on its left
    shot(page, "replay-expired-preview")
    page.click("#confirm")  # unticked
    sync_api.expect(page.locator("#force-missing")).to_contain_text("Nothing was replayed")
    assert producer.get(record.id).status.value == "expired"
    shot(page, "replay-expired-unticked")

    page.goto(f"{base}/console/records?status=expired")
    sync_api.expect(page.locator("#result-count")).to_contain_text("shown of")
    page.goto(f"{base}/console/records?since=yesterday")
    sync_api.expect(page.locator("#filter-error")).to_contain_text("since")
    assert page.locator("input[name=since]").input_value() == "yesterday"
    shot(page, "records-bad-filter")

    page.goto(f"{base}/console")
    sync_api.expect(page.locator("text=threads holding a task").first).to_be_visible()
    narrow = browser.new_page(viewport={"width": 420, "height": 800})
    narrow.context.add_cookies(page.context.cookies())
    for path in ("/console", "/console/records", f"/console/records/{record.id}"):
        narrow.goto(base + path)
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, (path, width)
    shot(narrow, "overview-420px")
    narrow.close()
    page.close()
