"""Benchmark: plan an edition for N subscribers and send it to a local SMTP sink.

Prints messages per second through plan + render + build + SMTP send, the
per-message cost of personalising and building, peak memory, and the same
per-message cost the naive way (render and premailer per message), with the ratio.

    python3 dev.py bench [--subscribers 10000] [--database-url URL]
    .venv/bin/python bench/send.py --plan-only --subscribers 1000000 --database-url URL

--plan-only seeds the readers, then plans the edition and streams its fan-out (every
batch of delivery ids, as the plan task enqueues them) in a fresh process, and prints
the time and that process's peak memory: flat from 100,000 readers to a million.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from sqlalchemy import update  # noqa: E402

from digest import store  # noqa: E402
from digest.config import Settings, load_settings  # noqa: E402
from digest.db import make_engine, make_sessionmaker, upgrade  # noqa: E402
from digest.editions import dispatch, lanes, pipeline, sending  # noqa: E402
from digest.editions.render import inline_css  # noqa: E402
from digest.editions.schedule import Cohort  # noqa: E402
from digest.mail.message import Envelope, MessageTemplate, build_message  # noqa: E402
from digest.mail.transport import SMTPTransport  # noqa: E402
from digest.models import Delivery  # noqa: E402

TZ = "Australia/Sydney"
DAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 29, 19, 1, tzinfo=UTC)
SECTIONS = ("news", "sport", "business")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SMTP_SINK = Path("/usr/sbin/smtp-sink")  # Postfix's C sink: its CPU is not ours to count
SMTP_SOURCE = Path("/usr/sbin/smtp-source")  # Postfix's C sender: the yardstick


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_sink() -> tuple[subprocess.Popen[str], str]:
    """Postfix's smtp-sink when it is installed, else the Python sink in bench/."""
    if SMTP_SINK.exists():
        port = free_port()
        argv = [str(SMTP_SINK)]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]  # it refuses to run as root
        proc = subprocess.Popen([*argv, f"127.0.0.1:{port}", "256"], text=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("smtp-sink did not start")
                time.sleep(0.05)
        return proc, f"smtp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "smtp_sink.py")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"smtp://127.0.0.1:{port}"


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def smtp_source_cpu(smtp_url: str, count: int, size: int, sessions: int) -> float | None:
    """CPU ms per message of Postfix's smtp-source sending `count` messages of about
    `size` bytes over `sessions` reused connections to the same sink; None without it."""
    if not SMTP_SOURCE.exists():
        return None
    host_port = smtp_url.removeprefix("smtp://")
    before = cpu_seconds(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [str(SMTP_SOURCE), "-d", "-s", str(sessions), "-m", str(count), "-l", str(size)]
        + ["-f", "news@example.com", "-t", "reader@example.com", host_port],
        check=True,
    )
    return (cpu_seconds(resource.RUSAGE_CHILDREN) - before) * 1000 / count


def message_size(settings: Settings) -> int:
    """Bytes of one message of the benchmark's edition, as sent."""
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        edition = store.find_edition(session, Cohort("morning", DAY, TZ))
        assert edition is not None
        variant = store.variants(session, edition.id)[0]
        template = sending.message_template(settings, variant, NOW)
        reader = lanes.address_reader(
            settings, store.installation_id(session), edition.id, 1, "reader1@example.com", "R 1"
        )
        return len(template.render(reader))


def cpu_rounds(pairs: list[tuple[float, float | None]], label: str) -> str:
    """The CPU comparison of several rounds: each round's figures and ratio, and the
    medians (cpu_line's wording when there is one round)."""
    if len(pairs) == 1 or any(theirs is None for _, theirs in pairs):
        return cpu_line(statistics.median(o for o, _ in pairs), pairs[0][1], label)
    ours = [o for o, _ in pairs]
    theirs = [t for _, t in pairs if t is not None]
    ratios = [o / t for o, t in zip(ours, theirs, strict=True)]
    each = ", ".join(f"{o:.3f}/{t:.3f} ms {o / t:.1f}x" for o, t in zip(ours, theirs, strict=True))
    return (
        f"CPU per message, {label}, {len(pairs)} rounds: median {statistics.median(ours):.3f} "
        f"ms; smtp-source median {statistics.median(theirs):.3f} ms for the same messages "
        f"right after each; ratio median {statistics.median(ratios):.1f}x ({each})"
    )


def cpu_line(ours_ms: float, theirs_ms: float | None, label: str) -> str:
    if theirs_ms is None:
        return f"CPU per message, {label}: {ours_ms:.3f} ms (smtp-source not installed)"
    return (
        f"CPU per message, {label}: {ours_ms:.3f} ms; smtp-source {theirs_ms:.3f} ms for the "
        f"same messages; ratio {ours_ms / theirs_ms:.1f}x"
    )


def bench_settings(
    database_url: str, smtp_url: str, data_dir: Path, batch: int, connections: int = 4
) -> Settings:
    # Other DIGEST_* settings in the environment apply (DIGEST_RECORD_GROUP=64, say).
    tuning = {k: v for k, v in os.environ.items() if k.startswith("DIGEST_")}
    return load_settings(
        {
            **tuning,
            "DIGEST_DATA_DIR": str(data_dir),
            "DIGEST_DATABASE_URL": database_url,
            "DIGEST_SMTP_URL": smtp_url,
            "DIGEST_SECRET_KEY": "bench-secret",
            "DIGEST_BATCH_SIZE": str(batch),
            "DIGEST_BASE_URL": "https://news.example.com",
            "DIGEST_SMTP_CONNECTIONS": str(connections),
        }
    )


def seed(settings: Settings, subscribers: int) -> None:
    """N active readers (a fifth following only sport) and 15 articles in 3 sections."""
    upgrade(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        store.insert_articles(
            session,
            [
                {
                    "guid": f"bench-{i}",
                    "url": f"https://news.example.com/story/{i}",
                    "title": f"Story number {i}: what happened and why it matters",
                    "summary_html": "<p>"
                    + "A paragraph of summary text for the story. " * 6
                    + "</p>",
                    "section": SECTIONS[i % 3],
                    "priority": i % 2,
                    "image_url": None,
                    "feed_id": None,
                    "published_at": NOW - timedelta(hours=1, minutes=i),
                    "seen_at": NOW - timedelta(hours=1, minutes=i),
                }
                for i in range(15)
            ],
        )
        for start in range(0, subscribers, 5000):
            store.insert_subscribers(
                session,
                [
                    {
                        "email": f"reader{i}@example.com",
                        "name": f"Reader {i}",
                        "timezone": TZ,
                        "morning": True,
                        "evening": True,
                        "sections": "sport" if i % 5 == 0 else "",
                        "status": "active",
                        "consent": "bench",
                        "created_at": NOW,
                    }
                    for i in range(start, min(start + 5000, subscribers))
                ],
            )
        session.commit()


def plan_child(settings: Settings) -> dict[str, float]:
    """Plan the edition and stream its batches, as digest.plan_edition does before it
    enqueues them; run in a fresh interpreter so its peak RSS is planning's alone."""
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    rss_before = rss_mb()
    with sessions() as session:
        t0 = time.perf_counter()
        plan = pipeline.plan_edition(session, settings, Cohort("morning", DAY, TZ), NOW)
        t1 = time.perf_counter()
        batches = ids = 0
        for batch in dispatch.queued_batches(session, plan.edition_id, settings.batch_size):
            batches += 1
            ids += len(batch)
        t2 = time.perf_counter()
    engine.dispose()
    return {
        "queued": plan.queued,
        "batches": batches,
        "ids": ids,
        "plan_s": t1 - t0,
        "fanout_s": t2 - t1,
        "rss_before_mb": rss_before,
        "rss_peak_mb": rss_mb(),
    }


def run_plan_only(settings: Settings, database_url: str) -> dict[str, float]:
    argv = [sys.executable, __file__, "--plan-child", "--database-url", database_url]
    argv += ["--batch", str(settings.batch_size)]
    env = {**os.environ, "DIGEST_DATA_DIR": str(settings.data_dir)}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_inprocess(settings: Settings, again: bool = False) -> dict[str, float]:
    """Plan, then send every batch over SMTP in this process; returns timings. `again`:
    the edition is planned already; every delivery goes back to the queue and is sent
    once more (the same work, for another round of the CPU comparison)."""
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    cohort = Cohort("morning", DAY, TZ)
    with sessions() as session:
        t0 = time.perf_counter()
        if again:
            edition = store.find_edition(session, cohort)
            assert edition is not None
            edition_id, queued = edition.id, requeue(session, edition.id)
        else:
            plan = pipeline.plan_edition(session, settings, cohort, NOW)
            edition_id, queued = plan.edition_id, plan.queued
        t1 = time.perf_counter()
        rss_first = 0.0
        total = 0
        ids = store.delivery_ids(session, edition_id)
        cpu0 = cpu_seconds()
        for i, batch in enumerate(sending.chunks(ids, settings.batch_size)):
            report = sending.send_batch(session, settings, SMTPTransport(settings.smtp), batch, NOW)
            total += report.sent
            if i == 0:
                rss_first = rss_mb()
        t2 = time.perf_counter()
        cpu = cpu_seconds() - cpu0
    engine.dispose()  # PostgreSQL reports a session's statistics when it ends
    return {
        "plan_s": t1 - t0,
        "send_s": t2 - t1,
        "send_cpu_ms": cpu * 1000 / max(1, total),
        "sent": total,
        "queued": queued,
        "rss_first_batch_mb": rss_first,
        "rss_end_mb": rss_mb(),
    }


def requeue(session: Any, edition_id: int) -> int:
    """Every delivery of the edition queued again, as planning left it; how many."""
    rows = session.execute(
        update(Delivery)
        .where(Delivery.edition_id == edition_id)
        .values(
            status="queued",
            attempts=0,
            lease_until=None,
            sent_at=None,
            message_id=None,
            last_error=None,
            next_attempt_at=None,
        )
    ).rowcount
    store.set_edition_status(session, edition_id, "sending", only_from=("done",))
    session.commit()
    return int(rows)


def per_message_costs(settings: Settings, samples: int) -> tuple[list[float], list[float]]:
    """Per-message cost our way (splice + build) and the naive way (premailer each time)."""
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        edition = store.find_edition(session, Cohort("morning", DAY, TZ))
        assert edition is not None
        variant = store.variants(session, edition.id)[0]
        prepared = sending.prepare_variant(variant)
        template = MessageTemplate(
            sending.sender_of(settings), variant.subject, NOW, "k", prepared.html, prepared.text
        )
        cohort = Cohort("morning", DAY, TZ)
        # The edition's own articles (selecting again would find none: they were sent).
        snapshot = [c for c, _ in pipeline.edition_articles(session, edition.id)]
        installation = store.installation_id(session)
        ours = []
        for i in range(samples * 20):
            t = time.perf_counter()
            reader = lanes.address_reader(
                settings, installation, edition.id, i, f"r{i}@example.com", f"Reader {i}"
            )
            template.render(reader)
            ours.append(time.perf_counter() - t)
        naive = []
        for i in range(samples):
            t = time.perf_counter()
            rendered = pipeline.render_variant(session, settings, cohort, snapshot, "")
            assert rendered is not None
            # premailer and a whole-message MIME build again, as a per-message renderer would
            html = inline_css(rendered[0].html)
            env = Envelope(
                f"r{i}@example.com",
                f"Reader {i}",
                f"<{i}@x>",
                "https://x/u",
                "u",
                rendered[0].text,
                html,
            )
            build_message(sending.sender_of(settings), rendered[0].subject, NOW, env)
            naive.append(time.perf_counter() - t)
    return ours, naive


def dkim_cost(settings: Settings, samples: int = 400) -> tuple[float, float, int]:
    """Median ms per message unsigned and DKIM-signed (RSA-2048, the test key), and size."""
    from dataclasses import replace

    from digest.mail.dkim import load_key

    key = load_key("bench", "example.com", ROOT / "tests" / "fixtures" / "dkim" / "test.key")
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        edition = store.find_edition(session, Cohort("morning", DAY, TZ))
        assert edition is not None
        variant = store.variants(session, edition.id)[0]
        prepared = sending.prepare_variant(variant)
        sender = sending.sender_of(settings)
        installation = store.installation_id(session)
        timings = []
        for signer in (sender, replace(sender, dkim=key)):
            template = MessageTemplate(
                signer, variant.subject, NOW, "k", prepared.html, prepared.text
            )
            runs = []
            for i in range(samples):
                reader = lanes.address_reader(
                    settings, installation, edition.id, i, f"r{i}@x.com", "R"
                )
                t = time.perf_counter()
                size = len(template.render(reader))
                runs.append(time.perf_counter() - t)
            timings.append(statistics.median(runs) * 1000)
    return timings[0], timings[1], size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--naive-samples", type=int, default=40)
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections per batch")
    parser.add_argument("--plan-only", action="store_true", help="seed, plan and fan out only")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="send the edition this many times, each followed by smtp-source (medians)",
    )
    parser.add_argument("--plan-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.plan_child:
        data_dir = Path(os.environ["DIGEST_DATA_DIR"])
        settings = bench_settings(args.database_url, "smtp://127.0.0.1:1", data_dir, args.batch)
        print(json.dumps(plan_child(settings)))
        return
    if args.plan_only:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.database_url or f"sqlite:///{tmp}/bench.db"
            settings = bench_settings(url, "smtp://127.0.0.1:1", Path(tmp), args.batch)
            t = time.perf_counter()
            seed(settings, args.subscribers)
            seeded = time.perf_counter() - t
            r = run_plan_only(settings, url)
        print(
            f"{args.subscribers:,} readers ({settings.database_url_safe.split('://')[0]}), "
            f"seeded in {seeded:.0f} s; plan (INSERT ... SELECT of {r['queued']:,.0f} "
            f"deliveries): {r['plan_s']:.1f} s; fan-out streamed {r['batches']:,.0f} batches "
            f"of {args.batch} ({r['ids']:,.0f} ids) in {r['fanout_s']:.1f} s; peak RSS of "
            f"the planning process {r['rss_peak_mb']:.0f} MB "
            f"({r['rss_before_mb']:.0f} MB before planning)"
        )
        return

    sink, smtp_url = start_sink()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.database_url or f"sqlite:///{tmp}/bench.db"
            settings = bench_settings(url, smtp_url, Path(tmp), args.batch, args.connections)
            t = time.perf_counter()
            seed(settings, args.subscribers)
            print(
                f"seeded {args.subscribers} subscribers in {time.perf_counter() - t:.1f} s "
                f"({settings.database_url_safe.split('?')[0]})"
            )
            rss_start = rss_mb()
            r = run_inprocess(settings)
            size = message_size(settings)
            # Round after round, our send and smtp-source's in turn, so that each ratio
            # compares the two in the same minute (the machine's speed drifts).
            cpu_pairs = []
            for round_ in range(max(1, args.rounds)):
                again = r if round_ == 0 else run_inprocess(settings, again=True)
                theirs = smtp_source_cpu(smtp_url, int(again["sent"]), size, args.connections)
                cpu_pairs.append((again["send_cpu_ms"], theirs))
            ours, naive = per_message_costs(settings, args.naive_samples)
            unsigned_ms, signed_ms, signed_size = dkim_cost(settings)
    finally:
        sink.terminate()
        sink.wait()
    total = r["plan_s"] + r["send_s"]
    ours_ms = statistics.median(ours) * 1000
    naive_ms = statistics.median(naive) * 1000
    print(
        f"plan (select, render + premailer per section choice, {r['queued']:.0f} rows): "
        f"{r['plan_s']:.2f} s"
    )
    print(
        f"send, batches of {args.batch} over {args.connections} SMTP connections each: "
        f"{r['send_s']:.2f} s"
    )
    print(f"messages/s, plan + render + build + SMTP send: {r['sent'] / total:,.0f}")
    print(f"messages/s, send phase only: {r['sent'] / r['send_s']:,.0f}")
    sink_name = "smtp-sink" if SMTP_SINK.exists() else "bench/smtp_sink.py"
    label = f"this process, send phase, {size / 1000:.1f} kB to {sink_name}"
    print(cpu_rounds(cpu_pairs, label))
    print(f"per-message personalise + MIME build (median of {len(ours)}): {ours_ms:.3f} ms")
    print(
        f"per-message naive render + premailer + stdlib MIME "
        f"(median of {len(naive)}): {naive_ms:.1f} ms"
    )
    print(
        f"naive / ours per message: {naive_ms / ours_ms:,.0f}x "
        f"(naive ceiling ~{1000 / naive_ms:,.0f} messages/s on one core)"
    )
    print(
        f"DKIM signing (RSA-2048, relaxed/relaxed, {signed_size / 1000:.0f} kB message): "
        f"{signed_ms - unsigned_ms:.2f} ms per message ({unsigned_ms:.3f} ms unsigned, "
        f"{signed_ms:.2f} ms signed; one core signs ~{1000 / signed_ms:,.0f} messages/s)"
    )
    print(
        f"peak RSS: {rss_start:.0f} MB before plan, {r['rss_first_batch_mb']:.0f} MB after the "
        f"first batch, {r['rss_end_mb']:.0f} MB after the last"
    )
    if os.environ.get("BENCH_ASSERT") and r["sent"] != args.subscribers:
        sys.exit(f"sent {r['sent']} of {args.subscribers}")


if __name__ == "__main__":
    main()
