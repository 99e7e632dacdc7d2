"""`digest check`: what a receiving mailbox provider would hold against these settings,
and the DNS records to publish. Exit 1 when something would hurt delivery."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import click

from digest.cli import cli
from digest.cli.inbound import read_env
from digest.config import Settings, load_settings
from digest.errors import DigestError
from digest.mail.dkim import public_record
from digest.mail.senders import dkim_domain, dkim_key

PLACEHOLDER_POSTAL = "1 Example Street"
# Domains that can never receive or authenticate mail (RFC 2606, RFC 6761).
RESERVED = ("example.com", "example.net", "example.org", "localhost")
RESERVED_TLDS = (".example", ".test", ".invalid", ".localhost", ".local")
# Second-level labels under which registrations sit one level deeper (co.uk, com.au).
SECOND_LEVEL = ("co", "com", "net", "org", "gov", "edu", "ac", "or", "ne")


@dataclass(frozen=True)
class Finding:
    level: str  # "problem" (hurts delivery: exit 1), "warning" or "ok"
    text: str


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def organisational(domain: str) -> str:
    """The registered domain, roughly (DMARC relaxed alignment compares these)."""
    labels = domain.split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in SECOND_LEVEL else 2
    return ".".join(labels[-keep:])


def reserved(domain: str) -> bool:
    return (
        domain in RESERVED
        or domain.endswith(RESERVED_TLDS)
        or any(domain.endswith("." + r) for r in RESERVED)
    )


def findings(settings: Settings, secret_set: bool) -> Iterator[Finding]:
    """Everything `digest check` says about the settings, worst first within each topic."""
    base = urlsplit(settings.base_url)
    host = (base.hostname or "").lower()
    if base.scheme != "https":
        yield Finding(
            "problem",
            f"DIGEST_BASE_URL {settings.base_url} is not https: one-click "
            "unsubscribe (RFC 8058), which Gmail and Yahoo require, needs https",
        )
    if host in ("localhost", "127.0.0.1", "::1") or reserved(host):
        yield Finding(
            "problem",
            f"DIGEST_BASE_URL points at {host}: readers cannot open "
            "its unsubscribe and preferences links",
        )
    from_domain = domain_of(settings.from_address)
    if reserved(from_domain):
        yield Finding(
            "problem",
            f"DIGEST_FROM_ADDRESS {settings.from_address} is a reserved "
            "example domain: no receiver will accept mail from it",
        )
    if reserved(domain_of(settings.unsubscribe_mailto)):
        yield Finding(
            "problem",
            f"DIGEST_UNSUBSCRIBE_MAILTO {settings.unsubscribe_mailto} cannot receive mail",
        )
    postal = settings.postal_address.strip()
    if not postal or PLACEHOLDER_POSTAL in postal:
        yield Finding(
            "problem",
            "DIGEST_POSTAL_ADDRESS is not set to your own postal address "
            "(CAN-SPAM and most providers' bulk rules ask for one in every message)",
        )
    if not secret_set:
        yield Finding(
            "problem",
            "DIGEST_SECRET_KEY is not set: links and bounce addresses "
            "would be signed by a key made on the spot, different on each machine",
        )
    org = organisational(from_domain)
    if settings.bounce_address:
        bounce_domain = domain_of(settings.bounce_address)
        if organisational(bounce_domain) != org:
            yield Finding(
                "problem",
                f"DIGEST_BOUNCE_ADDRESS domain {bounce_domain} is not "
                f"{org} or below it: SPF then does not align with From for DMARC",
            )
        else:
            yield Finding("ok", f"bounces return to {settings.bounce_address} (VERP-tagged)")
    else:
        yield Finding(
            "warning",
            "DIGEST_BOUNCE_ADDRESS is not set: bounces go to From, and "
            "only those that quote the Message-ID can be matched to a reader",
        )
    if settings.dkim_selector or settings.dkim_key_file:
        try:
            key = dkim_key(settings)
        except DigestError as exc:
            yield Finding("problem", str(exc))
        else:
            if key is None:
                yield Finding(
                    "problem", "DKIM needs both DIGEST_DKIM_SELECTOR and DIGEST_DKIM_KEY_FILE"
                )
            elif organisational(key.domain) != org:
                yield Finding(
                    "problem",
                    f"DKIM domain {key.domain} is not {org} or below it: "
                    "the signature does not align with From for DMARC",
                )
            else:
                yield Finding("ok", f"digest signs with DKIM: d={key.domain} s={key.selector}")
    else:
        yield Finding(
            "warning",
            "digest does not sign with DKIM: make sure your relay signs "
            f"for {from_domain} (Gmail and Yahoo reject unsigned bulk mail)",
        )
    if not settings.reply_to:
        yield Finding("warning", "DIGEST_REPLY_TO is not set: replies go to the From address")
    if settings.smtp is None:
        yield Finding("warning", "DIGEST_SMTP_URL is not set: messages go to the outbox folder")


def spf_mechanism(host: str) -> str:
    """The SPF mechanism naming a relay: ip4:/ip6: for an address (a: takes only names)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"a:{host}"
    return f"ip{ip.version}:{ip}"


def dns_records(settings: Settings) -> list[str]:
    """The TXT (and MX) records a sender publishes, as zone-file lines to copy."""
    from_domain = domain_of(settings.from_address)
    envelope = domain_of(settings.bounce_address) if settings.bounce_address else from_domain
    relay = settings.smtp.host if settings.smtp else "<your relay>"
    lines = [
        f"; SPF for the envelope sender's domain: name the hosts that send ({relay}).",
        f'{envelope}. IN TXT "v=spf1 {spf_mechanism(relay)} mx -all"',
    ]
    if settings.bounce_address:
        lines += [
            "; Bounces reach the MTA that pipes them into `digest inbound`.",
            f"{envelope}. IN MX 10 <your inbound MTA>.",
        ]
    try:
        key = dkim_key(settings)
    except DigestError:
        key = None
    if key is not None:
        record = public_record(key)
        # TXT strings hold 255 characters at most: split the key into several.
        chunks = " ".join(f'"{record[i : i + 250]}"' for i in range(0, len(record), 250))
        lines += [f"{key.selector}._domainkey.{key.domain}. IN TXT ( {chunks} )"]
    else:
        lines += [f"; DKIM: publish the record your relay gives you for {dkim_domain(settings)}."]
    lines += [
        "; DMARC: start with p=none and read the reports, then p=quarantine.",
        f'_dmarc.{organisational(from_domain)}. IN TXT "v=DMARC1; p=none; '
        f'rua=mailto:dmarc-reports@{organisational(from_domain)}; adkim=r; aspf=r"',
    ]
    return lines


@cli.command("check")
@click.option(
    "--env-file", envvar="DIGEST_ENV_FILE", default=None, help="Settings file (KEY=value lines)."
)
def check(env_file: str | None) -> None:
    """Say what a receiving provider would hold against these settings; print the DNS
    records to publish. Exit 1 when something would hurt delivery."""
    try:
        env = read_env(env_file)
        data_dir = Path(env.get("DIGEST_DATA_DIR") or "var").resolve()
        secret_set = bool(env.get("DIGEST_SECRET_KEY")) or (data_dir / "secret_key").exists()
        if not secret_set:
            env["DIGEST_SECRET_KEY"] = "not-set"  # check never makes a key; it says so below
        settings = load_settings(env, create_secret=False)
    except DigestError as exc:
        raise click.ClickException(str(exc)) from None
    found = list(findings(settings, secret_set))
    for finding in found:
        click.echo(f"{finding.level:>8}: {finding.text}")
    click.echo("\nDNS records to publish:\n")
    for line in dns_records(settings):
        click.echo(line)
    problems = sum(1 for f in found if f.level == "problem")
    if problems:
        click.echo(f"\n{problems} problem(s) would hurt delivery", err=True)
        raise SystemExit(1)
