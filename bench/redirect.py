"""Benchmark: the click redirect (/r/<token>) under gunicorn, with counting on.

Seeds an edition of a few articles (DIGEST_CLICK_TRACKING=aggregate), starts gunicorn
with the project's settings (digest/gunicorn_conf.py, its access log written to a
file), and loads it with `wrk` when it is installed (apt-get install wrk), else with a
Python load generator of several processes. Prints requests per second and latency
percentiles as the tool measured them, then checks that the clicks were counted:
every request is appended to the worker's buffer and written by its flush thread.

    .venv/bin/python bench/redirect.py [--seconds 10] [--connections 4] [--workers 2]
        [--database-url postgresql://...] [--python]
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from digest import store  # noqa: E402
from digest.config import load_settings  # noqa: E402
from digest.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from digest.editions import pipeline  # noqa: E402
from digest.editions.schedule import Cohort  # noqa: E402
from digest.mail.tokens import click_token  # noqa: E402
from digest.models import ClickCount  # noqa: E402

SECRET = "bench-secret-key"
TZ = "Australia/Sydney"
COHORT = Cohort("morning", date(2026, 11, 30), TZ)
PLANNED = datetime(2026, 11, 29, 19, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed(env: dict[str, str], articles: int) -> list[str]:
    """An edition of `articles` articles and one reader; its click paths."""
    settings = load_settings(env)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        store.insert_articles(
            session,
            [
                {
                    "guid": f"bench-{i}",
                    "url": f"https://news.example.com/story/{i}",
                    "title": f"Story {i}",
                    "summary_html": "<p>Summary</p>",
                    "section": "news",
                    "priority": 0,
                    "published_at": PLANNED - timedelta(minutes=5 * i + 5),
                    "seen_at": PLANNED - timedelta(minutes=5 * i + 5),
                    "image_url": None,
                    "feed_id": None,
                }
                for i in range(articles)
            ],
        )
        store.add_subscriber(session, "reader@example.com", PLANNED, timezone=TZ, status="active")
        session.commit()
        plan = pipeline.plan_edition(session, settings, COHORT, PLANNED)
        ids = store.edition_article_ids(session, plan.edition_id)
    engine.dispose()
    return [f"/r/{click_token(SECRET, plan.edition_id, aid)}" for aid in ids]


def counted(env: dict[str, str]) -> int:
    settings = load_settings(env)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        total = session.scalar(select(func.sum(ClickCount.human + ClickCount.machine)))
    engine.dispose()
    return int(total or 0)


def run_wrk(base: str, paths: list[str], seconds: int, connections: int, folder: Path) -> str:
    script = folder / "paths.lua"
    table = ", ".join(f'"{p}"' for p in paths)
    script.write_text(
        f"local paths = {{{table}}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        "  return wrk.format('GET', paths[i], {['User-Agent'] = 'Mozilla/5.0 bench'})\n"
        "end\n"
    )
    threads = min(2, connections)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        base,
    ]
    print("measured with:", " ".join(command))
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return out


def _load(base: str, paths: list[str], until: float, out: Any) -> None:
    host, port = base.split("//", 1)[1].split(":")
    latencies: list[float] = []
    errors = 0
    i = 0
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    while time.monotonic() < until:
        path = paths[i % len(paths)]
        i += 1
        started = time.perf_counter()
        try:
            conn.request("GET", path, headers={"User-Agent": "Mozilla/5.0 bench"})
            response = conn.getresponse()
            response.read()
            if response.status != 302:
                errors += 1
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
        except OSError:
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
        latencies.append(time.perf_counter() - started)
    out.put((latencies, errors))


def run_python(base: str, paths: list[str], seconds: int, processes: int) -> str:
    print(f"measured with: {processes} Python processes, one connection each, {seconds} s")
    queue: Any = multiprocessing.Queue()
    until = time.monotonic() + seconds
    workers = [
        multiprocessing.Process(target=_load, args=(base, paths, until, queue))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    results = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    latencies = sorted(x for r in results for x in r[0])
    errors = sum(r[1] for r in results)
    q = statistics.quantiles(latencies, n=100)
    return (
        f"Requests/sec: {len(latencies) / seconds:.0f}\n"
        f"p50 {q[49] * 1000:.2f} ms, p90 {q[89] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, "
        f"errors {errors}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--articles", type=int, default=12)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--python", action="store_true", help="the Python load generator")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="digest-bench-redirect-"))
    port = free_port()
    env = {
        **os.environ,
        "DIGEST_DATA_DIR": str(folder / "data"),
        "DIGEST_DATABASE_URL": args.database_url or f"sqlite:///{folder / 'digest.db'}",
        "DIGEST_SECRET_KEY": SECRET,
        "DIGEST_BASE_URL": f"http://127.0.0.1:{port}",
        "DIGEST_CLICK_TRACKING": "aggregate",
        "DIGEST_REDIS_URL": "",
        "WEB_BIND": f"127.0.0.1:{port}",
        "WEB_WORKERS": str(args.workers),
    }
    paths = seed(env, args.articles)
    base = f"http://127.0.0.1:{port}"
    log = open(folder / "gunicorn.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "--config",
            "python:digest.gunicorn_conf",
            "digest.web:create_app()",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", paths[0])
                status = conn.getresponse().status
                conn.close()
                if status == 302:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("gunicorn did not answer within 30 s; see " + str(folder / "gunicorn.log"))
            time.sleep(0.2)
        before = counted(env)
        print(
            f"gunicorn: {args.workers} sync workers, digest/gunicorn_conf.py (access log to a "
            f"file); {len(paths)} article links; database "
            f"{'PostgreSQL' if args.database_url else 'SQLite'}; counting on (aggregate)"
        )
        if shutil.which("wrk") and not args.python:
            out = run_wrk(base, paths, args.seconds, args.connections, folder)
            requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        else:
            out = run_python(base, paths, args.seconds, args.connections)
            requests = int(float(out.split()[1]) * args.seconds)
        print(out.rstrip())
        time.sleep(7)  # a click is written 2-4 s after it came (BURST_SECONDS + FLUSH_EVERY)
        after = counted(env)
        print(f"clicks counted in the database: {after - before} of about {requests} requests")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
