"""Screenshots of every dashboard page on demo data, for docs/screenshots/ (docs/web.md).

    .venv/bin/python scripts/web_screenshots.py [OUT_DIR]

Starts `dashboard-api serve --demo` on a scratch SQLite database, lets the simulated agents
work for a few seconds, signs in with the admin token and shoots each page at 1280 px
(plus the task list at a phone's width and the overview in the dark theme) with
/usr/bin/chromium.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(workdir: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env.update(
        DASHBOARD_DATABASE_URL=f"sqlite+aiosqlite:///{workdir / 'demo.db'}",
        DASHBOARD_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    out = workdir / "serve.out"
    with out.open("wb") as stdout:
        proc = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            [sys.executable, "-m", "dashboard_api", "serve", "--demo", "--port", str(port)],
            env=env,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                break
        time.sleep(0.2)
    token = next(
        line.split()[-1] for line in out.read_text().splitlines() if "admin token:" in line
    )
    return proc, base, token


def shoot(
    page: Page, base: str, path: str, out: Path, wait_ms: int = 2500, full: bool = False
) -> None:
    page.goto(base + path)
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(wait_ms)
    page.screenshot(path=str(out), full_page=full)
    print(f"{out}  <- {path}")


def main() -> int:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, base, token = start(Path(tmp))
        try:
            headers = {"Authorization": f"Bearer {token}"}
            task = None
            for _ in range(60):  # the simulated agents start tasks and stream output
                time.sleep(0.5)
                running = httpx.get(
                    f"{base}/api/tasks", params={"status": "running"}, headers=headers
                ).json()["items"]
                busy = [t for t in running if t["output_seq"] >= 4]
                if busy:
                    task = busy[0]["task_id"]
                    break
            if task is None:
                task = httpx.get(f"{base}/api/tasks", headers=headers).json()["items"][0]["task_id"]
            convs = httpx.get(f"{base}/api/conversations", headers=headers).json()["items"]
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(base + "/")
                shoot(page, base, "/", out_dir / "signin.png", wait_ms=300)
                page.fill("input[name=token]", token)
                page.click("button[type=submit]")
                page.wait_for_selector("[data-testid=whoami]")
                shoot(page, base, "/", out_dir / "overview.png")
                shoot(page, base, "/tasks", out_dir / "tasks.png")
                shoot(page, base, f"/tasks/{task}", out_dir / "task.png", wait_ms=3000, full=True)
                shoot(page, base, "/analytics", out_dir / "analytics.png")
                if convs:
                    path = f"/conversations/{convs[0]['conversation_id']}"
                    shoot(page, base, path, out_dir / "conversations.png")
                shoot(page, base, "/integrations", out_dir / "integrations.png")
                shoot(page, base, "/budgets", out_dir / "budgets.png")
                shoot(page, base, "/alerts", out_dir / "alerts.png")
                page.select_option("select[name=theme]", "dark")
                shoot(page, base, "/", out_dir / "overview-dark.png")
                page.select_option("select[name=theme]", "auto")
                page.set_viewport_size({"width": 390, "height": 844})
                shoot(page, base, "/tasks", out_dir / "tasks-phone.png")
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
