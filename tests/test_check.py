"""`digest check`: what a receiving provider would hold against the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from digest.cli import cli
from digest.cli.check import organisational

KEY = Path(__file__).parent / "fixtures" / "dkim" / "test.key"
PUB = Path(__file__).parent / "fixtures" / "dkim" / "test.pub.pem"


def good(tmp_path: Path) -> dict[str, str]:
    return {
        "DIGEST_DATA_DIR": str(tmp_path / "data"),
        "DIGEST_SECRET_KEY": "s3cret",
        "DIGEST_BASE_URL": "https://news.gazette.com.au",
        "DIGEST_FROM_ADDRESS": "news@gazette.com.au",
        "DIGEST_BOUNCE_ADDRESS": "bounces@mail.gazette.com.au",
        "DIGEST_REPLY_TO": "letters@gazette.com.au",
        "DIGEST_UNSUBSCRIBE_MAILTO": "unsubscribe@mail.gazette.com.au",
        "DIGEST_POSTAL_ADDRESS": "12 Harbour Street, Sydney NSW 2000",
        "DIGEST_DKIM_SELECTOR": "d2026",
        "DIGEST_DKIM_KEY_FILE": str(KEY),
        "DIGEST_SMTP_URL": "smtp://relay.gazette.com.au:587?starttls=1",
    }


def check(tmp_path: Path, values: dict[str, str]):
    """Run `digest check --env-file` with only the file's settings (none from outside)."""
    env_file = tmp_path / "digest.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    blank = {name: None for name in good(tmp_path)}  # nothing leaks in from the test run
    return CliRunner(env=blank).invoke(cli, ["check", "--env-file", str(env_file)])


def test_good_settings_pass_and_print_the_records(tmp_path: Path) -> None:
    result = check(tmp_path, good(tmp_path))
    assert result.exit_code == 0, result.output
    assert "problem" not in result.output
    out = result.output
    assert 'mail.gazette.com.au. IN TXT "v=spf1 a:relay.gazette.com.au mx -all"' in out
    assert "mail.gazette.com.au. IN MX 10" in out
    assert '_dmarc.gazette.com.au. IN TXT "v=DMARC1; p=none;' in out
    dkim_line = next(line for line in out.splitlines() if "._domainkey." in line)
    assert dkim_line.startswith("d2026._domainkey.gazette.com.au. IN TXT ( ")
    published = "".join(dkim_line.split('"')[1::2])
    openssl = "".join(PUB.read_text().splitlines()[1:-1])
    assert published == f"v=DKIM1; k=rsa; p={openssl}"
    assert not (tmp_path / "data").exists()  # check writes nothing, makes no key


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"DIGEST_BASE_URL": "http://news.gazette.com.au"}, "is not https"),
        ({"DIGEST_BASE_URL": "https://localhost:8000"}, "points at localhost"),
        ({"DIGEST_FROM_ADDRESS": "news@example.com"}, "reserved example domain"),
        ({"DIGEST_UNSUBSCRIBE_MAILTO": "u@example.org"}, "cannot receive mail"),
        ({"DIGEST_POSTAL_ADDRESS": ""}, "DIGEST_POSTAL_ADDRESS is not set"),
        ({"DIGEST_SECRET_KEY": ""}, "DIGEST_SECRET_KEY is not set"),
        ({"DIGEST_BOUNCE_ADDRESS": "b@bounces.other.net"}, "SPF then does not align"),
        ({"DIGEST_DKIM_DOMAIN": "other.net"}, "signature does not align"),
        ({"DIGEST_DKIM_KEY_FILE": "/nonexistent.pem"}, "cannot read DIGEST_DKIM_KEY_FILE"),
    ],
)
def test_what_would_hurt_delivery_fails(tmp_path: Path, change: dict[str, str], says: str) -> None:
    result = check(tmp_path, good(tmp_path) | change)
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.strip().startswith("problem")]
    assert any(says in problem for problem in problems), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "data" / "secret_key").exists()


def test_warnings_alone_do_not_fail(tmp_path: Path) -> None:
    values = good(tmp_path)
    for name in ("DIGEST_BOUNCE_ADDRESS", "DIGEST_DKIM_SELECTOR", "DIGEST_DKIM_KEY_FILE"):
        del values[name]
    result = check(tmp_path, values)
    assert result.exit_code == 0, result.output
    assert "make sure your relay signs for gazette.com.au" in result.output
    assert "DIGEST_BOUNCE_ADDRESS is not set" in result.output


def test_an_unreadable_settings_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", "--env-file", str(tmp_path / "missing.env")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: cannot read settings file {tmp_path / 'missing.env'}: No such file or directory"
    ]


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("gazette.com", "gazette.com"),
        ("mail.gazette.com", "gazette.com"),
        ("a.b.gazette.co.uk", "gazette.co.uk"),
        ("bounces.gazette.com.au", "gazette.com.au"),
    ],
)
def test_organisational_domain(domain: str, org: str) -> None:
    assert organisational(domain) == org


@pytest.mark.parametrize(
    ("relay", "mechanism"),
    [
        ("127.0.0.1", "ip4:127.0.0.1"),
        ("[2001:db8::25]", "ip6:2001:db8::25"),
        ("2001:db8::25", "ip6:2001:db8::25"),
        ("relay.example.net", "a:relay.example.net"),
    ],
)
def test_spf_names_an_ip_relay_with_ip4_or_ip6(relay: str, mechanism: str) -> None:
    from digest.cli.check import spf_mechanism

    assert spf_mechanism(relay) == mechanism
