"""Returned mail through a real Postfix, the way a publisher runs it.

An edition goes through the local Postfix to a user that does not exist and to a full
mailbox. Postfix writes its own RFC 3464 bounces to the VERP envelope sender, delivers
them through /etc/aliases to `digest inbound --env-file ...`, run as `nobody` from its
spool, and digest marks the right readers. This is the README's recipe, executed.

Needs Postfix (Debian: `apt-get install postfix`) and root, because it configures the
local Postfix (an alias, `local_recipient_maps =` so unknown users bounce after
acceptance as they would at a remote MX, and a mailbox size limit) and adds a user
`fullbox` whose mailbox is over that limit. DIGEST_SAVE_POSTFIX_FIXTURES=DIR keeps the
bounces Postfix wrote (tests/fixtures/postfix/ came from here).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from mailbox import mbox
from pathlib import Path

import pytest

from digest import store
from digest.config import load_settings
from digest.db import make_engine, make_sessionmaker, upgrade
from digest.editions import pipeline, sending
from digest.editions.schedule import Cohort
from digest.mail.transport import SMTPTransport
from tests.conftest import add_articles, wait_for

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DOMAIN = "digest.test"
ALIAS = "digest-bounces"
MARK = "# added by digest tests/test_postfix.py (the next line)"


def without_ours(text: str) -> list[str]:
    """The aliases file's lines without the test's mark and the alias line after it."""
    kept: list[str] = []
    skip = False
    for line in text.splitlines():
        if "# added by digest tests/test_postfix.py" in line:
            skip = line.startswith("#")  # older runs put the mark on the alias line itself
            continue
        if skip:
            skip = False
            if line.startswith(f"{ALIAS}:"):
                continue
        kept.append(line)
    return kept


pytestmark = [
    pytest.mark.skipif(
        not Path(POSTFIX).exists(), reason="Postfix is not installed (apt-get install postfix)"
    ),
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: configures the local Postfix, runs as nobody"
    ),
]


def postconf(*settings: str) -> None:
    subprocess.run(["postconf", "-e", *settings], check=True)


def listening(port: int = 25) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def site() -> Iterator[Path]:
    """A publisher's install: a data folder `nobody` owns, a settings file, the alias."""
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="digest-postfix-", dir="/var/tmp"))
    work.chmod(0o755)
    data = work / "data"
    data.mkdir()
    env_file = work / "digest.env"
    env_file.write_text(
        f"DIGEST_DATA_DIR={data}\n"
        "DIGEST_SECRET_KEY=test-secret-key\n"
        f"DIGEST_FROM_ADDRESS=news@{DOMAIN}\n"
        f"DIGEST_BOUNCE_ADDRESS={ALIAS}@{DOMAIN}\n"
        "DIGEST_BASE_URL=https://news.example.com\n"
    )
    env_file.chmod(0o644)
    copies = work / "copies.mbox"
    copies.touch()
    os.chown(copies, nobody.pw_uid, nobody.pw_gid)
    digest = Path(sys.executable).parent / "digest"
    aliases = Path("/etc/aliases")
    kept = without_ours(aliases.read_text())
    # The mark goes on a line of its own: an alias line has no comments, and Postfix
    # would take the words after it as more recipients.
    kept += [MARK, f'{ALIAS}: "|{digest} inbound --env-file {env_file}", {copies}']
    aliases.write_text("\n".join(kept) + "\n")
    subprocess.run(["newaliases"], check=True)
    destinations = subprocess.run(
        ["postconf", "-h", "mydestination"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if DOMAIN not in destinations.replace(",", " ").split():
        postconf(f"mydestination = {destinations}, {DOMAIN}".replace("= , ", "= "))
    postconf("local_recipient_maps =", "mailbox_size_limit = 20480000", "recipient_delimiter = +")
    if subprocess.run(["id", "fullbox"], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "fullbox"], check=True)
    box = Path("/var/mail/fullbox")
    subprocess.run(["truncate", "-s", "25M", str(box)], check=True)
    shutil.chown(box, "fullbox", "mail")
    if subprocess.run([POSTFIX, "status"], capture_output=True).returncode != 0:
        subprocess.run([POSTFIX, "start"], check=True, capture_output=True)
    else:
        subprocess.run([POSTFIX, "reload"], check=True, capture_output=True)
    wait_for(listening, 30, "Postfix to listen on 127.0.0.1:25")
    yield work
    aliases.write_text("\n".join(without_ours(aliases.read_text())) + "\n")
    subprocess.run(["newaliases"], check=True)
    shutil.rmtree(work, ignore_errors=True)


def test_postfix_bounces_reach_digest_through_the_readme_pipe(site: Path) -> None:
    data = site / "data"
    env = {"DIGEST_DATA_DIR": str(data), "DIGEST_SECRET_KEY": "test-secret-key"}
    env |= {
        "DIGEST_FROM_ADDRESS": f"news@{DOMAIN}",
        "DIGEST_BOUNCE_ADDRESS": f"{ALIAS}@{DOMAIN}",
        "DIGEST_BASE_URL": "https://news.example.com",
        "DIGEST_SMTP_URL": "smtp://127.0.0.1:25",
    }
    settings = load_settings(env, create_secret=False)
    upgrade(settings.database_url)
    today = datetime.now(UTC).date()
    now = datetime(today.year, today.month, today.day, 6, 1, tzinfo=UTC)  # just past 06:00
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    readers = ("nosuchuser", "fullbox")
    with sessions() as session:
        add_articles(session, now - timedelta(minutes=30), [("Ferry news", "news")])
        for user in readers:
            store.add_subscriber(session, f"{user}@{DOMAIN}", now, timezone="UTC", status="active")
        session.commit()
        cohort = Cohort("morning", now.date(), "UTC")
        plan = pipeline.plan_edition(session, settings, cohort, now)
        assert plan.queued == 2, plan.note
        assert settings.smtp is not None
        report = sending.run_edition(
            session, settings, SMTPTransport(settings.smtp), plan.edition_id, now
        )
        assert report.sent == 2, report.errors
    subprocess.run(["chown", "-R", "nobody:nogroup", str(data)], check=True)
    log = data / "inbound" / "inbound.log"

    def two_lines() -> bool:
        return log.exists() and len(log.read_text().splitlines()) >= 2

    wait_for(two_lines, 90, f"two bounces logged in {log}", interval=0.5)
    lines = log.read_text()
    assert "(matched by its VERP address): n***@digest.test is now bounced" in lines, lines
    assert "status 5.1.1" in lines and "status 5.2.2" in lines, lines
    assert "soft bounce 1 of 3 in 14 days; f***@digest.test stays active" in lines, lines
    with sessions() as session:
        status = {u: store.find_subscriber(session, f"{u}@{DOMAIN}") for u in readers}
        assert status["nosuchuser"] is not None and status["nosuchuser"].status == "bounced"
        assert status["fullbox"] is not None and status["fullbox"].status == "active"
        counts = store.edition_counts(session, plan.edition_id)
        assert counts == {"failed": 2}, counts
    engine.dispose()
    # Nothing written outside the data folder: no secret key made anywhere.
    assert not (data / "secret_key").exists()
    save = os.environ.get("DIGEST_SAVE_POSTFIX_FIXTURES")
    if save:
        box = mbox(str(site / "copies.mbox"))
        try:
            for key in box.keys():
                raw = box.get_bytes(key)  # as Postfix wrote it, not as Python would
                name = "unknown-user" if b"nosuchuser" in raw else "mailbox-full"
                Path(save, f"postfix-{name}.eml").write_bytes(raw)
        finally:
            box.close()
