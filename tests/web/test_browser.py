"""The web dashboard in a real browser (Debian's Chromium through Playwright) against a real
`dashboard-api serve`: sign-in, every page, filters in the URL, the live log and its resume
across a server restart, a conversation's live reply, stored text shown as text, the CSP.

Without /usr/bin/chromium these tests are skipped locally and fail under CI=true (.ci/run
installs the package). They share one server and one browser, so they run in one xdist
group (one worker), in order.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.web.server import ServeProcess

CHROMIUM = "/usr/bin/chromium"
VIEWER_ZONE = "Asia/Tokyo"  # UTC+09:00 all year
IN_CI = os.environ.get("CI") == "true"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("web-browser")]

if not Path(CHROMIUM).exists():
    if IN_CI:
        pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright  # noqa: E402

# The machine is shared: a few seconds of scheduling delay must not fail an expectation.
expect.set_options(timeout=15_000)

XSS_SCRIPT = "<script>window.__pwned = 'script'</script>"
XSS_IMG = "<img src=x onerror=\"window.__pwned = 'img'\">"
XSS_LINK = "<a href=\"javascript:window.__pwned='link'\">click me</a> javascript:alert(1)"
XSS = f"{XSS_SCRIPT} {XSS_IMG} {XSS_LINK}"


@dataclass
class Site:
    server: ServeProcess
    admin: str
    user: str
    agent: str

    def api(self, method: str, path: str, role: str = "agent", **kwargs: Any) -> Any:
        r = self.server.api(method, path, getattr(self, role), **kwargs)
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r.json() if r.content else None

    def task(self, task_id: str, **fields: Any) -> dict[str, Any]:
        body = {"task_id": task_id, "agent_type": "coder", "input_message": "do it", **fields}
        return dict(self.api("POST", "/api/tasks", json=body))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    server = ServeProcess(tmp_path_factory.mktemp("web-serve"))
    server.start()
    try:
        assert server.admin_token
        yield Site(
            server,
            admin=server.admin_token,
            user=server.token("alice", "user"),
            agent=server.token("engine-1", "agent"),
        )
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@dataclass
class Console:
    errors: list[str] = field(default_factory=list)

    def on_message(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


@pytest.fixture
def console() -> Console:
    return Console()


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    # A zone other than the machine's: the page must show times in the viewer's zone.
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id=VIEWER_ZONE, locale="en-GB"
    )
    p = context.new_page()
    p.set_default_timeout(15_000)
    p.on("console", console.on_message)
    p.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
    yield p
    context.close()


def sign_in(page: Page, site: Site, token: str | None = None, path: str = "/") -> None:
    page.goto(site.server.url + path)
    page.fill("input[name=token]", token or site.user)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("whoami")).to_be_visible()


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def log_seqs(page: Page) -> list[int]:
    return [
        int(s)
        for s in page.eval_on_selector_all(
            "[data-testid=task-log] .chunk[data-seq]", "els => els.map(e => e.dataset.seq)"
        )
    ]


# --- sign-in -------------------------------------------------------------------------------


def test_sign_in_keeps_the_tab_signed_in_and_refuses_bad_tokens(
    page: Page, site: Site, console: Console
) -> None:
    page.goto(site.server.url + "/tasks")
    page.fill("input[name=token]", "dash_not-a-real-token")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("refused")
    agent_token = site.agent
    page.fill("input[name=token]", agent_token)
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_contain_text("agent")

    page.fill("input[name=token]", site.user)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("whoami")).to_have_text("alice · user")
    expect(page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
    # The token is in sessionStorage, never in the URL; a reload and a typed URL keep it.
    assert site.user not in page.url
    page.reload()
    expect(page.get_by_test_id("whoami")).to_have_text("alice · user")
    page.goto(site.server.url + "/analytics")
    expect(page.get_by_test_id("whoami")).to_be_visible()
    # A user sees no admin action.
    page.goto(site.server.url + "/integrations")
    expect(page.get_by_test_id("sources-card")).to_be_visible()
    expect(page.get_by_role("button", name="Add source")).to_have_count(0)

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("input[name=token]")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.get_by_role("alert")).to_have_count(0)  # signed out by choice: no notice

    # A token revoked while signed in: the next call signs the page out and says why.
    doomed = site.server.token("carol", "user")
    sign_in(page, site, doomed)
    token_id = site.server.api("GET", "/api/me", doomed).json()["token_id"]
    site.server.cli("token", "revoke", token_id)
    page.goto(site.server.url + "/tasks")
    expect(page.get_by_role("alert")).to_contain_text("revoked")
    expect(page.locator("input[name=token]")).to_be_visible()
    # The refused calls are the only console errors (the browser logs each 401).
    assert all("401" in e for e in console.errors), console.errors


def test_admin_sees_admin_actions(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin, "/integrations")
    expect(page.get_by_test_id("whoami")).to_contain_text("admin")
    expect(page.get_by_role("button", name="Add source")).to_be_visible()


# --- every page ----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_renders_without_console_errors(
    page: Page, site: Site, console: Console, width: int
) -> None:
    task = site.task(f"page-{width}", status="running", source="github")
    site.api("POST", f"/api/tasks/{task['task_id']}/output", json={"content": "hello\n"})
    conv = site.api("POST", "/api/conversations", "user", json={"title": f"Chat {width}"})
    page.set_viewport_size({"width": width, "height": 900})
    sign_in(page, site)
    pages = {
        "/": "Overview",
        "/tasks": "Tasks",
        f"/tasks/{task['task_id']}": "Task",
        "/analytics": "Analytics",
        "/conversations": "Conversations",
        f"/conversations/{conv['conversation_id']}": "Conversations",
        "/integrations": "Integrations",
        "/budgets": "Budgets",  # in the menu because this server has /api/budgets
        "/alerts": "Alerts",
    }
    for path, heading in pages.items():
        page.goto(site.server.url + path)
        expect(page.locator("h1").first).to_contain_text(heading)
        page.wait_for_load_state("networkidle")
        expect(page.get_by_role("alert")).to_have_count(0)
        # Every control has an accessible name (a label, or aria-label).
        unlabelled = page.eval_on_selector_all(
            "input:not([type=hidden]), select, textarea",
            "els => els.filter(e => !(e.labels && e.labels.length)"
            " && !e.getAttribute('aria-label')).map(e => e.outerHTML)",
        )
        assert unlabelled == [], (path, unlabelled)
    # Charts are drawn (uPlot canvases) where the contract's hooks say.
    page.goto(site.server.url + "/analytics")
    expect(page.get_by_label("Time zone")).to_have_value(VIEWER_ZONE)
    for name in ("cost", "tasks", "tokens"):
        expect(page.locator(f"[data-testid=chart-{name}] canvas")).to_have_count(1)
    page.goto(site.server.url + "/")
    expect(page.locator("[data-testid=chart-cost-24h] canvas")).to_have_count(1)
    # Navigation by keyboard: the skip link, then the menu's links.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    # Nothing scrolls sideways at this width (tables scroll inside their own box).
    assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
    assert console.errors == []


# --- filters -------------------------------------------------------------------------------


def test_filters_change_the_list_and_the_url(page: Page, site: Site, console: Console) -> None:
    for i in range(3):
        site.task(f"flt-ok-{i}", agent_type="filterbot", input_message=f"needle {i}")
    for i in range(2):
        site.task(f"flt-bad-{i}", agent_type="filterbot", status="running", input_message="hay")
        site.api("PATCH", f"/api/tasks/flt-bad-{i}", json={"status": "failed"})
    sign_in(page, site, path="/tasks")
    rows = page.locator("tr[data-task-id]")
    expect(rows.first).to_be_visible()

    page.get_by_label("Agent type").select_option("filterbot")
    expect(page).to_have_url(re.compile(r"agent_type=filterbot"))
    expect(rows).to_have_count(5)
    expect(page.get_by_test_id("task-total")).to_contain_text("of 5")

    page.locator("input[name=status][value=failed]").check()
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(rows).to_have_count(2)
    ids = {rows.nth(i).get_attribute("data-task-id") for i in range(2)}
    assert ids == {"flt-bad-0", "flt-bad-1"}

    page.locator("input[name=status][value=failed]").uncheck()
    page.get_by_label("Search input").fill("needle 1")
    expect(page).to_have_url(re.compile(r"q=needle\+1|q=needle%201"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task-id", "flt-ok-1")

    # The URL alone reproduces the view (a shared link, a reload).
    page.goto(site.server.url + "/tasks?agent_type=filterbot&status=queued&sort=created_at")
    expect(rows).to_have_count(3)
    expect(rows.first).to_have_attribute("data-task-id", "flt-ok-0")
    expect(page.locator("input[name=status][value=queued]")).to_be_checked()
    expect(page.get_by_label("Sort")).to_have_value("created_at")
    assert console.errors == []


def test_analytics_filter_by_failure_reason(page: Page, site: Site, console: Console) -> None:
    site.task("why-agent-0", agent_type="reasonbot", status="running")
    site.api("PATCH", "/api/tasks/why-agent-0", json={"status": "failed"})
    sign_in(page, site, path="/analytics")
    expect(page.get_by_test_id("summary")).to_be_visible()

    def filtered(what: str) -> Any:
        return lambda r: f"/api/analytics/{what}" in r.url and "failure_reason=agent" in r.url

    # Every figure on the page asks for the reason: the summary, histogram and performance.
    with (
        page.expect_response(filtered("summary")) as summary,
        page.expect_response(filtered("costs/histogram")),
        page.expect_response(filtered("performance")),
    ):
        page.get_by_label("Failure reason").select_option("agent")
    expect(page).to_have_url(re.compile(r"failure_reason=agent"))
    body = summary.value.json()
    assert body["total_tasks"] == body["failed_tasks"] == body["failed_by_reason"]["agent"] >= 1
    assert body["failed_by_reason"]["lease_expired"] == 0
    stat = page.get_by_test_id("summary").locator(".stat", has_text="Tasks").first
    expect(stat.locator(".stat-value")).to_have_text(f"{body['total_tasks']:,}")

    # The URL alone reproduces the view; "Any task" drops the filter again.
    page.goto(site.server.url + "/analytics?failure_reason=agent")
    expect(page.get_by_label("Failure reason")).to_have_value("agent")
    with page.expect_response(
        lambda r: "/api/analytics/summary" in r.url and "failure_reason" not in r.url
    ):
        page.get_by_label("Failure reason").select_option("")
    expect(page).not_to_have_url(re.compile(r"failure_reason"))
    assert console.errors == []


def test_load_more_walks_with_the_exact_total_and_live_rows_update_in_place(
    page: Page, site: Site
) -> None:
    for i in range(55):
        site.task(f"many-{i:02d}", agent_type="pager")
    sign_in(page, site, path="/tasks?agent_type=pager")
    rows = page.locator("tr[data-task-id]")
    expect(rows).to_have_count(50)
    expect(page.get_by_test_id("task-total")).to_contain_text("50 shown of 55")
    page.get_by_role("button", name="Load 50 more").click()
    expect(rows).to_have_count(55)
    # A status change arrives over the `tasks` channel and changes its row in place.
    site.api("PATCH", "/api/tasks/many-54", json={"status": "running"})
    expect(page.locator("tr[data-task-id=many-54]")).to_contain_text("running")
    # A new matching task does not push the rows down: a banner offers it.
    site.task("many-new", agent_type="pager")
    expect(page.get_by_role("button", name=re.compile("1 new task"))).to_be_visible()
    expect(rows).to_have_count(55)


# --- the live log --------------------------------------------------------------------------


def test_output_appended_by_a_producer_shows_live(page: Page, site: Site) -> None:
    site.task("live-1", status="running")
    sign_in(page, site, path="/tasks/live-1")
    log = page.get_by_test_id("task-log")
    expect(page.get_by_test_id("live-state").first).to_have_text("Live")
    site.api("POST", "/api/tasks/live-1/output", json={"content": "first line\n"})
    expect(log).to_contain_text("first line")
    site.api(
        "POST",
        "/api/tasks/live-1/output",
        json={
            "chunks": [
                {"content": "oops on stderr\n", "stream": "stderr"},
                {"content": "\x1b[31mred\x1b[0m plain\n"},
                {"content": "agent restarted", "stream": "system"},
            ]
        },
    )
    expect(log.locator(".stream-stderr")).to_have_text("oops on stderr\n")
    expect(log.locator(".ansi-fg-1")).to_have_text("red")
    expect(log.locator(".stream-system")).to_have_text("agent restarted")
    assert "\x1b" not in log.inner_text()
    assert log_seqs(page) == [1, 2, 3, 4]
    # The times are the viewer's: created_at (UTC) shown at UTC+09:00.
    created = site.api("GET", "/api/tasks/live-1", "user")["created_at"]
    hh_mm = time.strftime("%H:%M", time.gmtime(_epoch(created) + 9 * 3600))
    expect(page.locator(".kv", has_text="Created")).to_contain_text(hh_mm)
    # A user may cancel a running task: the agent is asked, the page shows it at once.
    page.get_by_role("button", name="Cancel task").click()
    expect(page.locator(".page-head")).to_contain_text("cancel requested")
    # The task's status arrives live too.
    site.api("PATCH", "/api/tasks/live-1", json={"status": "completed", "result": "done"})
    expect(page.locator(".page-head .badge").first).to_have_text("completed")


def test_a_user_retries_a_failed_task_from_its_page(page: Page, site: Site) -> None:
    # Agents cannot sign in to the page at all, so every signed-in role may retry (user role).
    site.task("retry-1", status="running")
    sign_in(page, site, path="/tasks/retry-1")
    head = page.locator(".page-head")
    retry = page.get_by_role("button", name="Retry")
    expect(head.locator(".badge").first).to_have_text("running")
    expect(retry).to_have_count(0)
    # The failure arrives live and brings the button with it.
    site.api("PATCH", "/api/tasks/retry-1", json={"status": "failed", "error": "boom"})
    expect(head.locator(".badge").first).to_have_text("failed")
    retry.click()
    # The page moves to the new task, which links back to the one it retries.
    expect(page).not_to_have_url(re.compile(r"/tasks/retry-1$"))
    new_id = page.url.rsplit("/tasks/", 1)[1]
    again = site.api("GET", f"/api/tasks/{new_id}", "user")
    assert (again["retry_of"], again["attempt"], again["status"]) == ("retry-1", 2, "queued")
    expect(page.locator(".kv", has_text="Attempt").get_by_role("link")).to_have_text("retry-1")
    # A queued task (the retry itself) offers no Retry.
    expect(head.locator(".badge").first).to_have_text("queued")
    expect(retry).to_have_count(0)


def test_the_log_resumes_after_a_server_restart_with_no_gap_and_no_duplicate(
    page: Page, site: Site
) -> None:
    site.task("restart-1", status="running")
    sign_in(page, site, path="/tasks/restart-1")
    expect(page.get_by_test_id("live-state").first).to_have_text("Live")
    stop = threading.Event()
    sent: list[int] = []

    def produce() -> None:
        # A producer that retries until its append is acknowledged (the server is away for
        # a while); every line is numbered.
        n = 0
        while not stop.is_set():
            n += 1
            while not stop.is_set():
                try:
                    r = site.server.api(
                        "POST", "/api/tasks/restart-1/output", site.agent,
                        json={"content": f"line {n}\n"},
                    )  # fmt: skip
                    if r.status_code == 200:
                        sent.append(n)
                        break
                except Exception:  # noqa: S110 (the server is down: try again)
                    pass
                time.sleep(0.05)
            time.sleep(0.02)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        expect(page.get_by_test_id("task-log")).to_contain_text("line 10", timeout=30_000)
        site.server.kill()
        expect(page.get_by_test_id("live-state").first).not_to_have_text("Live")
        time.sleep(1.0)
        site.server.start()
        expect(page.get_by_test_id("live-state").first).to_have_text("Live", timeout=20_000)
        # Some more lines after the restart, then stop.
        resumed_at = len(sent)
        deadline = time.monotonic() + 10
        while len(sent) < resumed_at + 20 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        producer.join(10)
    full = site.api("GET", "/api/tasks/restart-1/logs/full", "user")
    last = full["last_seq"]
    expect(page.locator(f"[data-testid=task-log] .chunk[data-seq='{last}']")).to_have_count(1)
    assert log_seqs(page) == list(range(1, last + 1))
    assert page.get_by_test_id("task-log").text_content() == full["output"]
    assert last >= len(sent)  # every acknowledged line is there


# --- conversations -------------------------------------------------------------------------


def test_a_message_gets_its_reply_live(page: Page, site: Site, console: Console) -> None:
    conv = site.api(
        "POST", "/api/conversations", "user", json={"title": "Live chat", "agent_type": "chatbot"}
    )
    sign_in(page, site, path=f"/conversations/{conv['conversation_id']}")
    page.get_by_label("Message").fill("What is 6 x 7?")
    page.get_by_role("button", name="Send").click()
    messages = page.get_by_test_id("messages")
    expect(messages).to_contain_text("What is 6 x 7?")
    # An agent picks the task up, streams output and answers.
    claimed = site.api("POST", "/api/tasks/claim", json={"agent_type": "chatbot", "agent": "bot"})
    assert claimed["conversation_id"] == conv["conversation_id"]
    site.api("POST", f"/api/tasks/{claimed['task_id']}/output", json={"content": "thinking…\n"})
    expect(page.get_by_test_id("task-log")).to_contain_text("thinking…")
    site.api(
        "PATCH", f"/api/tasks/{claimed['task_id']}", json={"status": "completed", "result": "42"}
    )
    expect(messages.locator(".msg-assistant")).to_contain_text("42")
    assert console.errors == []


# --- stored text is text -------------------------------------------------------------------


def test_stored_markup_is_shown_as_text_and_runs_nothing(
    page: Page, site: Site, console: Console
) -> None:
    site.task("xss-1", status="running", input_message=XSS, metadata={"note": XSS}, model=XSS)
    site.api("POST", "/api/tasks/xss-1/output", json={"content": XSS + "\n"})
    site.api("PATCH", "/api/tasks/xss-1", json={"status": "failed", "error": XSS})
    conv = site.api("POST", "/api/conversations", "user", json={"title": XSS})
    site.api(
        "POST",
        f"/api/conversations/{conv['conversation_id']}/messages",
        "user",
        json={"content": XSS, "create_task": False},
    )
    site.api("PUT", "/api/agents/xss-agent", json={"description": XSS})
    sign_in(page, site, path="/tasks/xss-1")
    expect(page.get_by_test_id("task-log")).to_contain_text(XSS_SCRIPT)
    body = page.locator("main")
    expect(body).to_contain_text(XSS_IMG)
    for path in ("/tasks/xss-1", "/tasks", f"/conversations/{conv['conversation_id']}", "/"):
        page.goto(site.server.url + path)
        page.wait_for_load_state("networkidle")
        if path != "/":  # the overview shows none of these fields
            expect(page.locator("main")).to_contain_text("<script>")
        assert page.locator("main script, main img, main a[href^='javascript']").count() == 0
        assert page.evaluate("window.__pwned") is None
    assert console.errors == []


# --- headers -------------------------------------------------------------------------------


def test_the_page_is_sent_with_a_strict_csp(page: Page, site: Site) -> None:
    response = page.goto(site.server.url + "/tasks")
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    # The browser enforces it: an inline script injected now does not run.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__inline = 1'; document.body.append(s); }"
    )
    assert page.evaluate("window.__inline") is None
