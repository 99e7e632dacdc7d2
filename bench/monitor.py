"""Benchmark: what the monitoring check and a /metrics scrape cost against a big edition.

Seeds N readers (bench/send.py's seed), plans one edition for them, marks 60% of its
deliveries sent a second apart, then times `digest status --check`'s gathering and
judgement (digest.operations.monitor.check) and a whole /metrics scrape, median of
several runs each. The console's banner runs the same check on every page.

    .venv/bin/python bench/monitor.py [--subscribers 100000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from send import DAY, NOW, TZ, seed  # noqa: E402
from sqlalchemy import create_engine, text, update  # noqa: E402

from digest.config import load_settings  # noqa: E402
from digest.db import make_engine, make_sessionmaker, normalise_url  # noqa: E402
from digest.editions import pipeline  # noqa: E402
from digest.editions.schedule import Cohort  # noqa: E402
from digest.models import Delivery  # noqa: E402
from digest.operations import monitor  # noqa: E402
from digest.store import health as facts_q  # noqa: E402
from digest.store import heartbeats  # noqa: E402
from digest.store.overview import delivery_counts_since  # noqa: E402
from digest.web import create_app  # noqa: E402

TOKEN = "bench-metrics-token-0123456789"


def timed(fn: object, runs: int) -> float:
    """Median milliseconds of `runs` calls."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="PostgreSQL: a fresh schema in it")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="digest-bench-monitor-"))
    schema = None
    if args.database_url:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(normalise_url(args.database_url))
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in args.database_url else "?"
        url = f"{normalise_url(args.database_url)}{sep}options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{folder / 'bench.db'}"
    settings = load_settings(
        {
            "DIGEST_DATA_DIR": str(folder),
            "DIGEST_DATABASE_URL": url,
            "DIGEST_SECRET_KEY": "bench-secret",
            "DIGEST_METRICS_TOKEN": TOKEN,
        }
    )
    try:
        seed(settings, args.subscribers)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            plan = pipeline.plan_edition(session, settings, Cohort("morning", DAY, TZ), NOW)
            sent = int(plan.queued * 0.6)
            session.execute(
                update(Delivery)
                .where(Delivery.edition_id == plan.edition_id, Delivery.id <= sent)
                .values(status="sent", sent_at=NOW + timedelta(seconds=30))
            )
            session.commit()
            if url.startswith("postgresql"):
                session.execute(text("ANALYZE"))
                session.commit()
        now = NOW + timedelta(minutes=2)

        def check() -> None:
            with sessions() as session:
                monitor.check(session, settings, now)

        app = create_app(settings, clock=lambda: now)
        client = app.test_client()

        def scrape() -> None:
            response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200

        print(f"deliveries: {plan.queued} ({sent} sent), database: {url.split(':', 1)[0]}")
        with sessions() as session:
            day = now - timedelta(hours=24)
            parts = {
                "heartbeats": lambda: heartbeats.heartbeats(session, day),
                "waiting_counts": lambda: facts_q.waiting_counts(session),
                "recent_editions": lambda: facts_q.recent_editions(session, day),
                "unplanned_cohorts": lambda: monitor.unplanned_cohorts(session, settings, now),
                "delivery_counts_since": lambda: delivery_counts_since(session, day),
            }
            for name, part in parts.items():
                print(f"  {name}: {timed(part, args.runs):.1f} ms")
        print(f"digest status --check (gather + judge): {timed(check, args.runs):.1f} ms median")
        print(f"/metrics scrape: {timed(scrape, args.runs):.1f} ms median")
        app.extensions["digest"].engine.dispose()
        engine.dispose()
    finally:
        if schema:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()


if __name__ == "__main__":
    main()
