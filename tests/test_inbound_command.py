"""`digest inbound` run the way Postfix runs it: a separate process, from a folder it
cannot write, with next to no environment (PATH and ORIGINAL_RECIPIENT), its settings
from the file named on the command line only, and as `nobody` when the tests run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from digest import store
from digest.config import load_settings
from digest.db import make_engine, make_sessionmaker, upgrade
from tests.conftest import NOW

FIXTURES = Path(__file__).parent / "fixtures"
DIGEST = Path(sys.executable).parent / "digest"
UNKNOWN_TAG = "digest-bounces+1.1.vd5caqjh5iqppiwx@digest.test"
AS_ROOT = os.geteuid() == 0


@dataclass
class Site:
    root: Path
    data: Path
    env_file: Path
    spool: Path

    def settings_text(self, **extra: str) -> str:
        values = {
            "DIGEST_DATA_DIR": str(self.data),
            "DIGEST_SECRET_KEY": "test-secret-key",
            "DIGEST_BOUNCE_ADDRESS": "digest-bounces@digest.test",
            **extra,
        }
        return "".join(f"{k}={v}\n" for k, v in values.items() if v is not None)

    def run(
        self, stdin: bytes, *args: str, recipient: str = "", env_file: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = {"PATH": "/usr/bin:/bin"}
        if recipient:
            env["ORIGINAL_RECIPIENT"] = recipient
        argv = [str(DIGEST), "inbound", "--env-file", str(env_file or self.env_file), *args]
        return subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            cwd=self.spool,
            env=env,
            timeout=60,
            user="nobody" if AS_ROOT else None,
        )

    def readers(self) -> dict[str, str]:
        settings = load_settings({"DIGEST_DATA_DIR": str(self.data), "DIGEST_SECRET_KEY": "k"})
        engine = make_engine(settings.database_url)
        try:
            with make_sessionmaker(engine)() as session:
                return {s.email: s.status for s in store.iter_subscribers(session, None)}
        finally:
            engine.dispose()

    def files(self) -> set[str]:
        return {str(p.relative_to(self.root)) for p in self.root.rglob("*")}


@pytest.fixture
def site() -> Iterator[Site]:
    """A data folder with a migrated database holding the fixtures' two readers."""
    root = Path(tempfile.mkdtemp(prefix="digest-inbound-", dir="/var/tmp" if AS_ROOT else None))
    root.chmod(0o755)
    data, spool = root / "data", root / "spool"
    data.mkdir()
    spool.mkdir()
    site = Site(root, data, root / "digest.env", spool)
    site.env_file.write_text(site.settings_text())
    url = f"sqlite:///{data / 'digest.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        for email in ("nosuchuser@digest.test", "fullbox@digest.test"):
            store.add_subscriber(session, email, NOW, status="active")
        session.commit()
    engine.dispose()
    spool.chmod(0o555)  # like Postfix's spool: the command may not write where it starts
    if AS_ROOT:
        nobody = pwd.getpwnam("nobody")
        for path in [data, *data.rglob("*")]:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    yield site
    spool.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


def one_line(text: bytes) -> str:
    lines = text.decode().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_a_postfix_bounce_through_the_pipe(site: Site) -> None:
    before = site.files()
    raw = (FIXTURES / "postfix" / "postfix-unknown-user.eml").read_bytes()
    result = site.run(raw, recipient=UNKNOWN_TAG)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stdout)
    assert line.endswith("n***@digest.test is now bounced") and "VERP" in line
    assert site.readers()["nosuchuser@digest.test"] == "bounced"
    log = (site.data / "inbound" / "inbound.log").read_text().splitlines()
    assert len(log) == 1 and log[0].endswith(line)
    created = site.files() - before
    assert created <= {"data/inbound", "data/inbound/inbound.log", "data/digest.db-journal"}
    assert not (site.data / "secret_key").exists()


def test_replies_are_kept_and_counted(site: Site, tmp_path: Path) -> None:
    reply = b"From: Ana <ana@example.com>\nTo: letters@digest.test\nSubject: Re: news\n\nThanks!\n"
    result = site.run(reply)
    assert result.returncode == 0, result.stderr
    assert one_line(result.stdout).startswith("kept: ")
    kept = list((site.data / "inbound" / "replies").glob("*.eml"))
    assert len(kept) == 1 and kept[0].read_bytes() == reply
    status = subprocess.run(
        [str(DIGEST), "status"],
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "DIGEST_DATA_DIR": str(site.data), "DIGEST_SECRET_KEY": "k"},
        cwd=tmp_path,
        timeout=60,
    )
    assert f"replies kept: 1 in {site.data / 'inbound' / 'replies'}" in status.stdout.decode()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (None, "cannot read settings file"),
        ({"DIGEST_SECRET_KEY": None}, "DIGEST_SECRET_KEY is not set"),
        ({"DIGEST_DATA_DIR": "var"}, "DIGEST_DATA_DIR must be set to an absolute path"),
        ({"DIGEST_DATABASE_URL": "sqlite:////nonexistent/digest.db"}, "no database at"),
        (
            {"DIGEST_DATABASE_URL": "postgresql://digest@127.0.0.1:9/digest?connect_timeout=2"},
            "database unavailable",
        ),
        ({"DIGEST_MAX_ATTEMPTS": "many"}, "DIGEST_MAX_ATTEMPTS must be a whole number"),
    ],
)
def test_what_it_cannot_use_is_a_temporary_failure(site: Site, settings, says: str) -> None:
    """Exit 75: Postfix keeps the message and tries again, and the one line it logs says why."""
    env_file = site.root / "other.env"
    if settings is not None:
        env_file.write_text(site.settings_text(**settings))
    before = site.files()
    raw = (FIXTURES / "postfix" / "postfix-unknown-user.eml").read_bytes()
    result = site.run(raw, recipient=UNKNOWN_TAG, env_file=env_file)
    assert result.returncode == 75, (result.stdout, result.stderr)
    assert says in one_line(result.stderr)
    assert site.files() == before  # no secret key, no database, no log made anywhere
    assert site.readers()["nosuchuser@digest.test"] == "active"


def test_a_reply_it_cannot_keep_is_a_temporary_failure(site: Site) -> None:
    (site.data / "inbound").mkdir(mode=0o555)
    if AS_ROOT:
        os.chown(site.data / "inbound", 0, 0)
    elif os.access(site.data / "inbound", os.W_OK):
        pytest.skip("this user can write a read-only folder")
    result = site.run(b"From: a@example.com\nSubject: hello\n\nhi\n")
    assert result.returncode == 75
    assert "cannot keep the reply" in one_line(result.stderr)
