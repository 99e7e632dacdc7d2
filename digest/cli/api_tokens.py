"""`digest api-tokens`: keys for the JSON API (/api/v1), stored only as hashes."""

from __future__ import annotations

import getpass

import click

from digest.cli import App, cli, pass_app
from digest.operations import api_tokens


@cli.group("api-tokens")
def api_tokens_group() -> None:
    """Tokens for the JSON API."""


@api_tokens_group.command("add")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(api_tokens.SCOPES),
    required=True,
    help="subscribe: only sign-ups; read: reads; write: reads and changes.",
)
@pass_app
def api_tokens_add(app: App, name: str, scope: str) -> None:
    """Make a token; it is printed once and stored only as a hash."""
    with app.session() as session:
        token, raw = api_tokens.add(session, name, scope, app.now(), getpass.getuser())
        session.commit()
        click.echo(f"API token {token.name} ({token.scope}); it is not shown again:", err=True)
    click.echo(raw)


@api_tokens_group.command("list")
@pass_app
def api_tokens_list(app: App) -> None:
    """Every token: name, scope, first characters, last use, revoked or not."""
    with app.session() as session:
        for t in api_tokens.tokens(session):
            used = t.last_used_at.isoformat(timespec="minutes") if t.last_used_at else "never"
            state = f"revoked {t.revoked_at:%Y-%m-%d}" if t.revoked_at else "active"
            click.echo(f"{t.name}\t{t.scope}\t{t.prefix}…\tlast used {used}\t{state}")


@api_tokens_group.command("revoke")
@click.argument("name")
@pass_app
def api_tokens_revoke(app: App, name: str) -> None:
    """Revoke a token: refused from the next request on."""
    with app.session() as session:
        api_tokens.revoke(session, name, app.now(), getpass.getuser())
        session.commit()
    click.echo(f"API token {name} revoked")
