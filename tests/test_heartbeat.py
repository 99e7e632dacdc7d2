"""Claim renewal timing (pure) and a batch that outlives its claim several times over."""

from __future__ import annotations

from datetime import timedelta

import pytest

from digest import store
from digest.config import parse_smtp_url
from digest.editions import pipeline, sending
from digest.editions.heartbeat import renew_every
from digest.mail.transport import SMTPTransport
from tests.test_pipeline import AFTER, CUT, MORNING, add_articles, add_reader


@pytest.mark.parametrize(
    ("claim", "per_message", "every"),
    [
        (45, 30, 14 / 3),  # a whole message still fits just before each renewal
        (45, 5, 13),
        (600, 30, 569 / 3),
        (3, 1, 1 / 3),
        (3, 2.5, 0.3),  # no room to spare: renew often
    ],
)
def test_renew_often_enough_for_a_whole_message(claim, per_message, every) -> None:
    assert renew_every(claim, per_message) == pytest.approx(every)


def test_a_live_batch_keeps_its_rows_past_its_claim(session, settings, smtp_server) -> None:
    """Each row's claim is 3 s; the batch takes about 4 s. Its heartbeat renews the claim,
    so a sweep in the middle finds nothing to take, and every row is sent once."""
    import threading

    sink, url = smtp_server
    sink.delay = 0.1
    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    for i in range(40):
        add_reader(session, f"h{i:02}@example.com")
    session.commit()
    settings = settings.with_(
        smtp=parse_smtp_url(f"{url}?deadline=0.5"), claim_seconds=3, smtp_connections=1
    )
    plan = pipeline.plan_edition(session, settings, MORNING, AFTER)
    ids = store.delivery_ids(session, plan.edition_id)
    swept: list[int] = []

    def sweep_later() -> None:
        from digest.db import make_engine, make_sessionmaker

        engine = make_engine(settings.database_url)
        with make_sessionmaker(engine)() as other:
            # 3.5 s of real time later, as the sweep's clock would say
            found = pipeline.sweep(other, settings, AFTER + timedelta(seconds=3.5))
            swept.extend(i for batch in found.values() for i in batch)
        engine.dispose()

    timer = threading.Timer(3.5, sweep_later)
    timer.start()
    report = sending.send_batch(session, settings, SMTPTransport(settings.smtp), ids, AFTER)
    timer.join()
    assert swept == []
    assert report.sent == 40 and len(sink.messages) == 40
    assert store.edition_counts(session, plan.edition_id) == {"sent": 40}


def test_claims_shorter_than_a_message_are_refused_in_one_line(tmp_path) -> None:
    from digest.errors import ConfigError
    from tests.conftest import make_settings
    from workers.config import celery_config

    settings = make_settings(
        tmp_path,
        "sqlite://",
        DIGEST_REDIS_URL="redis://r:6379/0",
        DIGEST_SMTP_URL="smtp://mail:25?deadline=30",
        DIGEST_CLAIM_SECONDS="20",
    )
    with pytest.raises(ConfigError, match=r"DIGEST_CLAIM_SECONDS \(20\) must exceed .* \(30 s"):
        celery_config(settings)
