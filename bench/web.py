"""The web dashboard in Chromium: task-list first render on a large database, and a task log
taking 1,000 lines/s for a minute (responsiveness, bounded DOM).

    .venv/bin/python -m bench.web                      # 1,000,000 tasks (seeded once, reused)
    .venv/bin/python -m bench.web --tasks 200000 --log-seconds 20

Needs PostgreSQL (as the other benchmarks) and /usr/bin/chromium. What it measures and the
current figures are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import BIN, cli, connect, db_url, free_port, log, pct, recreate_db, task_count

CHROMIUM = "/usr/bin/chromium"

# Task-list views measured: the default, a status filter, a search, a sort by cost.
LIST_VIEWS = [
    ("/tasks", "newest first"),
    ("/tasks?status=failed", "status=failed"),
    ("/tasks?q=flaky", "q=flaky"),
    ("/tasks?sort=-cost_usd", "sort=-cost_usd"),
]

# In-page probes of responsiveness while the log streams: the lag of a 50 ms timer (how
# long the main thread kept it waiting) and the gaps between animation frames.
PROBE_JS = """() => {
  const probe = {lags: [], frames: [], nodes: [], lines: []};
  let expected = performance.now() + 50;
  probe.timer = setInterval(() => {
    const now = performance.now();
    probe.lags.push(Math.max(0, now - expected));
    expected = now + 50;
  }, 50);
  let last = performance.now();
  const frame = (t) => {
    probe.frames.push(t - last); last = t; probe.raf = requestAnimationFrame(frame);
  };
  probe.raf = requestAnimationFrame(frame);
  probe.sampler = setInterval(() => {
    probe.nodes.push(document.getElementsByTagName('*').length);
    probe.lines.push(document.querySelectorAll('[data-testid=task-log] .line').length);
  }, 1000);
  window.__probe = probe;
  window.__lastSeq = () => {
    const all = document.querySelectorAll('[data-testid=task-log] [data-seq]');
    return all.length ? Number(all[all.length - 1].dataset.seq) : 0;
  };
}"""

STOP_PROBE_JS = """() => {
  const p = window.__probe;
  clearInterval(p.timer); clearInterval(p.sampler); cancelAnimationFrame(p.raf);
  return {lags: p.lags, frames: p.frames, nodes: p.nodes, lines: p.lines,
          last_seq: window.__lastSeq(),
          heap: performance.memory ? performance.memory.usedJSHeapSize : null};
}"""


class Server:
    """`dashboard-api serve` on the benchmark's database (a subprocess)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            [str(BIN / "dashboard-api"), "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError("serve did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def ensure_seeded(name: str, n: int, env: dict[str, str]) -> str:
    count = await task_count(name)
    if count is not None and count >= n:
        log(f"reusing {name} ({count:,} tasks)")
        cli("migrate", env=env)
        return f"reused ({count:,} tasks)"
    log(f"seeding {n:,} tasks into {name} ...")
    await recreate_db(name)
    cli("migrate", env=env)
    start = time.perf_counter()
    cli("seed", "--tasks", str(n), "--random-seed", "1", env=env)
    seeded = time.perf_counter() - start
    conn = await connect(name)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return f"seeded in {seeded:.0f} s"


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=whoami]")


def ms_stats(samples: list[float]) -> str:
    return f"p50 {pct(samples, 0.5):.0f} ms, max {max(samples):.0f} ms"


# Set before any page script runs: the moment the first task row enters the DOM.
FIRST_ROW_JS = """(() => {
  const mo = new MutationObserver(() => {
    if (document.querySelector('tr[data-task-id]')) {
      mo.disconnect();
      window.__firstRow = performance.now();
    }
  });
  mo.observe(document, {childList: true, subtree: true});
})()"""

CLICK_TO_ROW_JS = """async (href) => {
  const a = document.createElement('a');
  a.href = href; a.textContent = 'bench'; document.body.append(a);
  const start = performance.now();
  const seen = new Promise((resolve) => {
    const mo = new MutationObserver(() => {
      if (!document.querySelector('tr[data-task-id]')) return;
      mo.disconnect();
      resolve(performance.now());
    });
    mo.observe(document.getElementById('app'), {childList: true, subtree: true});
  });
  a.click();
  return (await seen) - start;
}"""

TIMED_FETCH_JS = """async ([url, token]) => {
  const t = performance.now();
  const r = await fetch(url, {headers: token ? {Authorization: 'Bearer ' + token} : {}});
  await r.json();
  return performance.now() - t;
}"""


def measure_list(page: Any, base: str, token: str, runs: int) -> list[dict[str, Any]]:
    """Navigation to the list until its first row is in the DOM (timed in the page): by a
    menu click (the app already loaded, from the light conversations page) and by a full
    page load (from navigation start: HTML, modules, token check, list request, render).
    With the same list's API answer alone (fetch in the page) and /api/health, the
    service's own floor."""
    page.add_init_script(FIRST_ROW_JS)
    results = []
    for path, label in LIST_VIEWS:
        clicks, loads, apis, healths = [], [], [], []
        api_path = "/api" + path + ("&" if "?" in path else "?") + "per_page=50"
        for _ in range(runs):
            page.goto(f"{base}/conversations")
            page.wait_for_load_state("networkidle")
            clicks.append(page.evaluate(CLICK_TO_ROW_JS, path))
            page.goto(f"{base}{path}")
            page.wait_for_selector("tr[data-task-id]", timeout=60_000)
            loads.append(page.evaluate("window.__firstRow"))
            page.wait_for_load_state("networkidle")
            apis.append(page.evaluate(TIMED_FETCH_JS, [api_path, token]))
            healths.append(page.evaluate(TIMED_FETCH_JS, ["/api/health", None]))
        results.append(
            {"view": label, "click": clicks, "load": loads, "api": apis, "health": healths}
        )
        log(
            f"  {label:<16} menu click -> first row {ms_stats(clicks)}; full load {ms_stats(loads)}"
        )
    return results


def produce(
    base: str, agent: str, task_id: str, rate: int, seconds: float, sent: list[int]
) -> None:
    """Append `rate` one-line chunks per second for `seconds`, 10 batches a second."""
    batch = max(1, rate // 10)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {agent}"}) as client:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            chunks = []
            for _ in range(batch):
                n += 1
                color = "\x1b[32m" if n % 10 == 0 else ""
                stream = "stderr" if n % 25 == 0 else "stdout"
                chunks.append(
                    {
                        "content": f"{color}line {n}: building module {n % 97}\x1b[0m\n",
                        "stream": stream,
                    }
                )
            r = client.post(f"/api/tasks/{task_id}/output", json={"chunks": chunks}, timeout=30)
            r.raise_for_status()
            sent.append(r.json()["last_seq"])
            target = start + (n / rate)
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def measure_log(page: Any, base: str, agent: str, rate: int, seconds: float) -> dict[str, Any]:
    task_id = f"bench-web-log-{os.getpid()}-{int(time.time())}"
    r = httpx.post(
        f"{base}/api/tasks",
        json={
            "task_id": task_id,
            "agent_type": "bench",
            "input_message": "log",
            "status": "running",
        },
        headers={"Authorization": f"Bearer {agent}"},
    )
    r.raise_for_status()
    page.goto(f"{base}/tasks/{task_id}")
    page.wait_for_selector("[data-testid=task-log]")
    page.wait_for_function(
        "document.querySelector('[data-testid=live-state]').textContent === 'Live'"
    )
    page.evaluate(PROBE_JS)
    sent: list[int] = []
    producer = threading.Thread(
        target=produce, args=(base, agent, task_id, rate, seconds, sent), daemon=True
    )
    started = time.monotonic()
    producer.start()
    producer.join()
    produced_for = time.monotonic() - started
    last = sent[-1] if sent else 0
    t = time.perf_counter()
    page.wait_for_function(f"window.__lastSeq() >= {last}", timeout=60_000, polling=50)
    catch_up = (time.perf_counter() - t) * 1000
    probe = page.evaluate(STOP_PROBE_JS)
    return {
        "appended": last,
        "seconds": produced_for,
        "catch_up_ms": catch_up,
        **probe,
    }


async def main(args: argparse.Namespace) -> int:
    if not Path(CHROMIUM).exists():
        log(f"{CHROMIUM} is missing: apt-get install chromium")
        return 2
    from playwright.sync_api import sync_playwright

    url = db_url(args.db)
    env = {**os.environ, "DASHBOARD_DATABASE_URL": url, "DASHBOARD_LOG_LEVEL": "WARNING"}
    env.pop("DASHBOARD_REDIS_URL", None)
    seeded = await ensure_seeded(args.db, args.tasks, env)
    user = cli("token", "create", "--user", "bench-web", "--role", "user", env=env).split()[-1]
    agent = cli("token", "create", "--user", "bench-web-agent", "--role", "agent", env=env).split()[
        -1
    ]
    report: dict[str, Any] = {"tasks": args.tasks, "data": seeded}

    def run_browser() -> None:
        with Server(env) as server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            sign_in(page, server.url, user)
            log(f"task list on {args.tasks:,} tasks ({args.runs} runs per view):")
            report["list"] = measure_list(page, server.url, user, args.runs)
            log(f"task log at {args.rate:,} lines/s for {args.log_seconds:.0f} s ...")
            report["log"] = measure_log(page, server.url, agent, args.rate, args.log_seconds)
            browser.close()

    await asyncio.to_thread(run_browser)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def print_report(report: dict[str, Any]) -> None:
    print(f"\nweb dashboard, {report['tasks']:,} tasks ({report['data']})")
    print(f"{'task list view':<16} {'menu click->row p50':>20} {'full load p50':>14} "
          f"{'API alone p50':>14} {'/api/health p50':>16}")  # fmt: skip
    for v in report["list"]:
        print(
            f"{v['view']:<16} {pct(v['click'], 0.5):>17.0f} ms {pct(v['load'], 0.5):>11.0f} ms "
            f"{pct(v['api'], 0.5):>11.0f} ms {pct(v['health'], 0.5):>13.1f} ms"
        )
    lg = report["log"]
    rate = lg["appended"] / lg["seconds"] if lg["seconds"] else 0
    print(
        f"\ntask log: {lg['appended']:,} lines in {lg['seconds']:.0f} s ({rate:,.0f}/s); "
        f"caught up {lg['catch_up_ms']:.0f} ms after the last append"
    )
    print(
        f"  main-thread lag of a 50 ms timer: p50 {pct(lg['lags'], 0.5):.0f} ms, "
        f"p99 {pct(lg['lags'], 0.99):.0f} ms, max {max(lg['lags']):.0f} ms"
    )
    print(
        f"  frame gaps: p50 {pct(lg['frames'], 0.5):.0f} ms, p99 {pct(lg['frames'], 0.99):.0f} ms, "
        f"max {max(lg['frames']):.0f} ms"
    )
    heap = f"{lg['heap'] / 1e6:.0f} MB" if lg["heap"] else "n/a"
    print(
        f"  DOM: log lines max {max(lg['lines'])} (bound 2,000), "
        f"elements max {max(lg['nodes']):,} (first {lg['nodes'][0]:,}, "
        f"last {lg['nodes'][-1]:,}); JS heap at the end {heap}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.web", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--tasks", type=int, default=1_000_000, help="tasks in the database")
    parser.add_argument("--db", default=os.environ.get("DASHBOARD_BENCH_WEB_DB", "dash_bench_web"))
    parser.add_argument("--runs", type=int, default=7, help="navigations per list view")
    parser.add_argument("--rate", type=int, default=1000, help="log lines per second")
    parser.add_argument("--log-seconds", type=float, default=60.0)
    parser.add_argument("--json", help="write the raw samples here")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
