"""Settings from DIGEST_* variables: the database URL assembled from its parts."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from digest.config import load_settings, postgres_url, tls_client_context
from digest.db import alembic_config, make_engine, normalise_url
from digest.errors import ConfigError

PG_URL = os.environ.get("DIGEST_TEST_DATABASE_URL")

# Every printable ASCII character that is not a letter or digit, then the ones that
# trouble URLs most, percent-escapes that must stay literal, spaces and non-ASCII.
EVERY_SPECIAL = "".join(c for c in string.punctuation) + " "
PASSWORDS = [
    EVERY_SPECIAL,
    "p@ss:w/rd",
    "@:/?#[]!$&'()*+,;=",
    "%41%2F%%",
    " spaces at both ends ",
    "ünïcødé-€-密码",
    "a+b=c",
    "tab\there",
]


def settings_for(tmp_path: Path, **env: str) -> Any:
    return load_settings({"DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k", **env})


@pytest.mark.parametrize("password", PASSWORDS)
def test_every_character_of_the_password_survives(tmp_path: Path, password: str) -> None:
    settings = settings_for(
        tmp_path, DIGEST_DATABASE_HOST="postgres", DIGEST_DATABASE_PASSWORD=password
    )
    url = make_url(normalise_url(settings.database_url))
    assert (url.host, url.port, url.database, url.username) == (
        "postgres",
        5432,
        "digest",
        "digest",
    )
    assert url.password == password
    # What the psycopg dialect hands the driver, and what alembic reads back.
    _args, connect = make_engine(settings.database_url).dialect.create_connect_args(url)
    assert connect["password"] == password and connect["host"] == "postgres"
    migrations = alembic_config(settings.database_url).get_main_option("sqlalchemy.url")
    assert make_url(migrations).password == password
    assert password not in settings.database_url_safe and "***" in settings.database_url_safe
    assert password not in repr(settings)


@pytest.mark.parametrize(
    ("user", "name"),
    [("dig@st:user", "my/db?x#y"), (EVERY_SPECIAL, EVERY_SPECIAL), ("ünï", "数据")],
)
def test_user_and_database_names_are_quoted_too(tmp_path: Path, user: str, name: str) -> None:
    settings = settings_for(
        tmp_path,
        DIGEST_DATABASE_HOST="db.internal",
        DIGEST_DATABASE_PORT="6543",
        DIGEST_DATABASE_USER=user,
        DIGEST_DATABASE_NAME=name,
        DIGEST_DATABASE_PASSWORD="p@ss",
    )
    url = make_url(settings.database_url)
    assert (url.username, url.database, url.host, url.port) == (user, name, "db.internal", 6543)


@pytest.mark.parametrize(
    ("host", "parsed_host"),
    [("postgres", "postgres"), ("10.0.0.5", "10.0.0.5"), ("::1", "::1"), ("[::1]", "::1")],
)
def test_hosts_names_and_addresses(host: str, parsed_host: str) -> None:
    url = make_url(postgres_url(host, 5432, "digest", "digest", "pw"))
    assert url.host == parsed_host and url.port == 5432


def test_a_socket_folder_goes_in_the_query() -> None:
    url = make_url(postgres_url("/var/run/postgresql", 5432, "digest", "digest", None))
    assert url.host is None and url.query["host"] == "/var/run/postgresql"
    assert url.password is None and url.database == "digest"


def test_a_whole_url_wins_and_is_kept_as_given(tmp_path: Path) -> None:
    whole = "postgresql://app:s%40fe@db.example.com:5433/prod?sslmode=require"
    settings = settings_for(
        tmp_path,
        DIGEST_DATABASE_URL=whole,
        DIGEST_DATABASE_HOST="postgres",
        DIGEST_DATABASE_PASSWORD="other",
    )
    assert settings.database_url == whole


def test_no_database_settings_means_the_sqlite_file(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'digest.db'}"
    assert settings.database_wait_seconds == 60


def test_the_password_from_a_file_without_its_last_newline(tmp_path: Path) -> None:
    secret = tmp_path / "db_password"
    secret.write_text("p@ss:w/rd \n", encoding="utf-8")
    settings = settings_for(
        tmp_path, DIGEST_DATABASE_HOST="postgres", DIGEST_DATABASE_PASSWORD_FILE=str(secret)
    )
    assert make_url(settings.database_url).password == "p@ss:w/rd "


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DIGEST_DATABASE_PASSWORD": "x"}, "DIGEST_DATABASE_PASSWORD is set but"),
        ({"DIGEST_DATABASE_HOST": "h", "DIGEST_DATABASE_PORT": "0"}, "1 to 65535"),
        ({"DIGEST_DATABASE_HOST": "h", "DIGEST_DATABASE_PORT": "five"}, "whole number"),
        (
            {"DIGEST_DATABASE_HOST": "h", "DIGEST_DATABASE_PASSWORD_FILE": "/nonexistent/pw"},
            "DIGEST_DATABASE_PASSWORD_FILE '/nonexistent/pw': No such file",
        ),
        (
            {
                "DIGEST_DATABASE_HOST": "h",
                "DIGEST_DATABASE_PASSWORD": "a",
                "DIGEST_DATABASE_PASSWORD_FILE": "/etc/hostname",
            },
            "not both",
        ),
        ({"DIGEST_DATABASE_WAIT_SECONDS": "soon"}, "DIGEST_DATABASE_WAIT_SECONDS"),
    ],
)
def test_database_setting_mistakes_are_one_clear_line(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_for(tmp_path, **env)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.skipif(not PG_URL, reason="DIGEST_TEST_DATABASE_URL not set")
def test_an_assembled_url_reaches_a_real_postgresql(tmp_path: Path) -> None:
    real = make_url(PG_URL or "")
    settings = settings_for(
        tmp_path,
        DIGEST_DATABASE_HOST=real.host or "127.0.0.1",
        DIGEST_DATABASE_PORT=str(real.port or 5432),
        DIGEST_DATABASE_USER=real.username or "postgres",
        DIGEST_DATABASE_NAME=real.database or "postgres",
        # Trust auth on the test server ignores it; a mangled URL would not even parse.
        DIGEST_DATABASE_PASSWORD=real.password or EVERY_SPECIAL,
    )
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT current_database(), current_user")).one()
    finally:
        engine.dispose()
    assert tuple(row) == (real.database or "postgres", real.username or "postgres")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIGEST_SOFT_BOUNCE_LIMIT", "0"),
        ("DIGEST_SOFT_BOUNCE_DAYS", "two"),
        ("DIGEST_SES_TOPIC_ARNS", "arn:aws:sqs:eu-west-1:123456789012:q"),
        ("DIGEST_POSTMARK_WEBHOOK_AUTH", "no-colon"),
        ("DIGEST_SENDGRID_WEBHOOK_KEY", "not a key"),
        ("DIGEST_INBOUND_IMAP_URL", "pop3://u:p@host/"),
    ],
)
def test_returned_mail_settings_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    env = {"DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k", name: value}
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_returned_mail_settings_and_their_secrets(tmp_path: Path) -> None:
    env = {
        "DIGEST_DATA_DIR": str(tmp_path),
        "DIGEST_SECRET_KEY": "k",
        "DIGEST_SES_TOPIC_ARNS": (
            "arn:aws:sns:eu-west-1:123456789012:a, arn:aws:sns:us-east-1:123456789012:b"
        ),
        "DIGEST_MAILGUN_SIGNING_KEY": "mailgun-secret",
        "DIGEST_POSTMARK_WEBHOOK_AUTH": "user:postmark-secret",
        "DIGEST_INBOUND_IMAP_URL": "imaps://u:imap-secret@imap.example.net/INBOX",
    }
    settings = load_settings(env)
    assert settings.ses_topic_arns == (
        "arn:aws:sns:eu-west-1:123456789012:a",
        "arn:aws:sns:us-east-1:123456789012:b",
    )
    assert (settings.soft_bounce_limit, settings.soft_bounce_days) == (3, 14)
    shown = repr(settings)
    assert not any(s in shown for s in ("mailgun-secret", "postmark-secret", "imap-secret"))


def test_one_tls_client_context_per_purpose_and_trust_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made once per process (making one reads the whole CA bundle), verifying as the
    default does; another purpose, or another SSL_CERT_FILE, gets a context of its own."""
    import ssl

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    smtp = tls_client_context("smtp")
    assert tls_client_context("smtp") is smtp
    assert smtp.verify_mode == ssl.CERT_REQUIRED and smtp.check_hostname
    assert tls_client_context("https") is not smtp
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    other = tls_client_context("smtp")
    assert other is not smtp and tls_client_context("smtp") is other
