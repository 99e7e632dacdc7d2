"""A bounce mailbox on a real Dovecot (started here, plaintext auth on loopback, mail in
a temporary maildir): `digest inbound --imap` acts on the bounces and moves them, and
leaves replies and mail it does not understand exactly where they were."""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest import store
from digest.cli import cli
from digest.config import ConfigError
from digest.mail.returns import verp_address
from digest.readers.mailbox import parse_imap_url
from tests.conftest import NOW, free_port
from tests.test_bounce_corpus import dsn

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
CORPUS = Path(__file__).parent / "fixtures" / "bounces" / "flufl"
SECRET = "test-secret-key"
BASE = "digest-bounces@digest.test"


@pytest.fixture
def dovecot() -> Iterator[str]:
    """A Dovecot serving IMAP on a free loopback port; yields its URL without folder."""
    if not os.path.exists(DOVECOT):
        pytest.skip("Dovecot is not installed (Debian: dovecot-core dovecot-imapd)")
    # Not under tmp_path: Dovecot's unprivileged processes must reach the files, and
    # pytest's folders are private to the user.
    root = Path(tempfile.mkdtemp(prefix="digest-dovecot-"))
    for name in ("run", "state", "mail"):
        (root / name).mkdir(parents=True)
    root.chmod(0o755)
    (root / "passwd").write_text("bounces:{PLAIN}s3cret\n")
    if os.geteuid() == 0:
        user, group = "nobody", "nogroup"
        shutil.chown(root / "mail", user, group)
        users = ""
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
        group = str(os.getgid())
        users = (
            f"default_internal_user = {user}\ndefault_login_user = {user}\n"
            f"default_internal_group = {group}\n"
        )
    port = free_port()
    config = root / "dovecot.conf"
    config.write_text(
        f"""base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
{users}protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={user} gid={group} home={root}/mail/%u
}}
mail_location = maildir:{root}/mail/%u
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
"""
    )
    output = root / "dovecot.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
                    if probe.recv(100).startswith(b"* OK"):
                        break
                raise OSError("no IMAP greeting yet")
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    log = (
                        (root / "dovecot.log").read_text()
                        if (root / "dovecot.log").exists()
                        else ""
                    )
                    pytest.fail(f"Dovecot did not start: {output} {log}")
                time.sleep(0.1)
        yield f"imap://bounces:s3cret@127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def append(url: str, folder: str, raw: bytes) -> None:
    target = parse_imap_url(f"{url}/{folder}")
    conn = imaplib.IMAP4(target.host, target.port)
    conn.login(target.user, target.password)
    conn.append(folder, None, None, raw)
    conn.logout()


def subjects(url: str, folder: str) -> list[str]:
    target = parse_imap_url(url)
    conn = imaplib.IMAP4(target.host, target.port)
    conn.login(target.user, target.password)
    conn.select(f'"{folder}"')
    _, data = conn.uid("SEARCH", "ALL")
    found = []
    for uid in (data[0] or b"").split():
        _, parts = conn.uid("FETCH", uid, "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        header = next(p[1] for p in parts if isinstance(p, tuple))
        flags = parts[0][0].decode() if isinstance(parts[0], tuple) else ""
        subject = header.decode().split(":", 1)[1].strip()
        found.append(subject + (" [processed]" if "$DigestProcessed" in flags else ""))
    conn.logout()
    return sorted(found)


def delivered_to(raw: bytes, address: str, subject: str) -> bytes:
    body = raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw
    body = (
        body.replace(b"\nSubject:", b"\nX-Old-Subject:", 1)
        if body.startswith(b"Subject") is False
        else body
    )
    return f"Delivered-To: {address}\nSubject: {subject}\n".encode() + body


def test_imap_bounces_are_acted_on_and_moved_the_rest_left(dovecot, tmp_path, database_url) -> None:
    from digest.config import load_settings
    from digest.db import make_engine, make_sessionmaker, upgrade

    env_file = tmp_path / "digest.env"
    env_file.write_text(
        f"DIGEST_DATA_DIR={tmp_path / 'data'}\nDIGEST_DATABASE_URL={database_url}\n"
        f"DIGEST_SECRET_KEY={SECRET}\nDIGEST_BOUNCE_ADDRESS={BASE}\n"
    )
    settings = load_settings(
        {
            "DIGEST_DATA_DIR": str(tmp_path / "data"),
            "DIGEST_DATABASE_URL": database_url,
            "DIGEST_SECRET_KEY": SECRET,
        }
    )
    engine = make_engine(settings.database_url)
    upgrade(database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        ana = store.add_subscriber(session, "ana@example.org", NOW, status="active").id
        userx = store.add_subscriber(session, "userx@example.de", NOW, status="active").id
        bob = store.add_subscriber(session, "bob@example.org", NOW, status="active").id
        session.commit()
    hard = dsn("ana@example.org").replace(
        b"Subject: Undelivered Mail Returned to Sender", b"Subject: hard bounce for ana"
    )
    append(
        dovecot, "INBOX", f"Delivered-To: {verp_address(BASE, SECRET, 0, ana)}\n".encode() + hard
    )
    qmail = (CORPUS / "qmail_01.txt").read_bytes()
    append(
        dovecot, "INBOX", delivered_to(qmail, verp_address(BASE, SECRET, 0, userx), "qmail bounce")
    )
    reply = MIMEText("Thanks for the morning edition!\n")
    reply["From"] = "bob@example.org"
    reply["Subject"] = "a reply"
    append(dovecot, "INBOX", reply.as_bytes())
    stranger = dsn("someone@example.net").replace(
        b"Subject: Undelivered Mail Returned to Sender", b"Subject: not ours"
    )
    append(dovecot, "INBOX", stranger)

    runner = CliRunner()
    url = f"{dovecot}/INBOX?move=Processed"
    result = runner.invoke(cli, ["inbound", "--env-file", str(env_file), "--imap", url])
    assert result.exit_code == 0, result.output
    assert "4 read, 2 acted on" in result.output
    assert subjects(dovecot, "INBOX") == ["a reply", "not ours"]
    assert subjects(dovecot, "Processed") == ["hard bounce for ana", "qmail bounce"]
    with sessions() as session:
        assert store.get_subscriber(session, ana).status == "bounced"
        assert store.get_subscriber(session, userx).status == "bounced"
        assert store.get_subscriber(session, bob).status == "active"
    # A second pass finds nothing new to act on and still leaves the rest alone.
    again = runner.invoke(cli, ["inbound", "--env-file", str(env_file), "--imap", url])
    assert again.exit_code == 0 and "2 read, 0 acted on" in again.output
    # Without ?move=, processed mail is flagged instead.
    append(
        dovecot,
        "INBOX",
        f"Delivered-To: {verp_address(BASE, SECRET, 0, bob)}\n".encode()
        + dsn("bob@example.org").replace(
            b"Subject: Undelivered Mail Returned to Sender", b"Subject: bob bounced"
        ),
    )
    flagged = runner.invoke(
        cli, ["inbound", "--env-file", str(env_file), "--imap", f"{dovecot}/INBOX"]
    )
    assert flagged.exit_code == 0 and "3 read, 1 acted on" in flagged.output
    assert subjects(dovecot, "INBOX") == ["a reply", "bob bounced [processed]", "not ours"]
    engine.dispose()


def test_a_mailbox_that_refuses_the_login_is_exit_75(dovecot, tmp_path) -> None:
    env_file = tmp_path / "digest.env"
    (tmp_path / "data").mkdir()
    db = tmp_path / "data" / "digest.db"
    db.touch()
    env_file.write_text(
        f"DIGEST_DATA_DIR={tmp_path / 'data'}\nDIGEST_DATABASE_URL=sqlite:///{db}\n"
        f"DIGEST_SECRET_KEY={SECRET}\n"
    )
    wrong = dovecot.replace("s3cret", "wrong") + "/INBOX"
    result = CliRunner().invoke(cli, ["inbound", "--env-file", str(env_file), "--imap", wrong])
    assert result.exit_code == 75
    assert "wrong" not in result.output and "cannot reach the mailbox" in result.output


@pytest.mark.parametrize(
    "url",
    ["pop3://u:p@host/", "imaps://host/INBOX", 'imap://u:p@host/IN"BOX', "imap://u:p@host:x/"],
)
def test_bad_imap_urls_name_the_problem(url) -> None:
    with pytest.raises(ConfigError):
        parse_imap_url(url)


def test_a_bounce_of_another_installation_is_left_in_a_shared_mailbox(
    dovecot, tmp_path, sqlite_url
) -> None:
    from email.message import EmailMessage

    from digest.db import make_engine, make_sessionmaker
    from digest.mail.tokens import message_id
    from tests.test_inbound import dsn as quoting_dsn

    env_file = tmp_path / "digest.env"
    env_file.write_text(
        f"DIGEST_DATA_DIR={tmp_path / 'data'}\nDIGEST_DATABASE_URL={sqlite_url}\n"
        f"DIGEST_SECRET_KEY={SECRET}\nDIGEST_BOUNCE_ADDRESS={BASE}\n"
    )
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        ana = store.add_subscriber(session, "ana@example.org", NOW, status="active").id
        installation = store.installation_id(session)
        session.commit()
    other = "zzzzzzzz" if installation != "zzzzzzzz" else "yyyyyyyy"
    for subject, part in (("ours", installation), ("another installation's", other)):
        original = EmailMessage()
        original["To"] = "ana@example.org"
        original["Message-ID"] = message_id(SECRET, part, 0, ana, "digest.test")
        original.set_content("x")
        raw = quoting_dsn(original).replace(
            b"Subject: Undelivered Mail Returned to Sender", f"Subject: {subject}".encode()
        )
        append(dovecot, "INBOX", raw)
    url = f"{dovecot}/INBOX?move=Processed"
    result = CliRunner().invoke(cli, ["inbound", "--env-file", str(env_file), "--imap", url])
    assert result.exit_code == 0 and "2 read, 1 acted on" in result.output, result.output
    assert subjects(dovecot, "INBOX") == ["another installation's"]
    assert subjects(dovecot, "Processed") == ["ours"]
    with sessions() as session:
        assert store.get_subscriber(session, ana).status == "bounced"
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("pop3://u:p@host/INBOX", "must start with imap:// or imaps://"),
        ("imaps://host/INBOX", "imap[s]://user:password@host/FOLDER"),
    ],
)
def test_a_wrong_imap_url_is_the_operators_to_fix_not_a_retry(url: str, said: str) -> None:
    """Exit 75 tells an MTA or cron "try again later"; a URL that can never work is a
    usage error: one line naming what is wrong, exit 2, nothing read."""
    result = CliRunner().invoke(cli, ["inbound", "--imap", url])
    assert result.exit_code == 2
    assert said in result.output and "Traceback" not in result.output
