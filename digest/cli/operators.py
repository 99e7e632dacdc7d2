"""`digest operators`: the people who may sign in to the console (/admin)."""

from __future__ import annotations

import sys

import click

from digest.cli import App, cli, pass_app
from digest.cli.readers import operator_name
from digest.operations import operators as ops


@cli.group("operators")
def operators_group() -> None:
    """Console accounts."""


@operators_group.command("add")
@click.argument("name")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
@pass_app
def operators_add(app: App, name: str, password_stdin: bool) -> None:
    """Add an operator; asks for the password (at least 12 characters)."""
    name = ops.check_name(name)
    password = _password(password_stdin)
    with app.session() as session:
        ops.add(session, name, password, app.now())
        ops.record(session, name, "operator added", _by(), app.now())
        session.commit()
    click.echo(f"operator {name} added; sign in at {app.settings.base_url}/admin")


def _by() -> str:
    # Filed under the operator it is about; who ran the command is said here.
    return f"by {operator_name()} with the CLI"


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@operators_group.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@pass_app
def operators_passwd(app: App, name: str, password_stdin: bool) -> None:
    """Give an operator a new password; their console sessions end."""
    password = _password(password_stdin)
    with app.session() as session:
        ops.set_password(session, name, password)
        ops.record(session, ops.check_name(name), "password changed", _by(), app.now())
        session.commit()
    click.echo(f"operator {name}: new password; every console session of theirs has ended")


@operators_group.command("remove")
@click.argument("name")
@pass_app
def operators_remove(app: App, name: str) -> None:
    """Remove an operator; their console sessions end at once."""
    with app.session() as session:
        ops.remove(session, name)
        ops.record(session, ops.check_name(name), "operator removed", _by(), app.now())
        session.commit()
    click.echo(f"operator {name} removed")


@operators_group.command("list")
@pass_app
def operators_list(app: App) -> None:
    """Operators and when each last signed in."""
    from digest.store.operators import list_operators

    with app.session() as session:
        for op in list_operators(session):
            last = op.last_login_at.isoformat(timespec="minutes") if op.last_login_at else "never"
            click.echo(f"{op.name}\tlast sign-in {last}")
