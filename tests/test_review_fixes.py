"""Findings of a security review of the console and the sign-up form, each closed."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from digest import store
from digest.mail.addresses import mailbox_of
from digest.operations import operators
from digest.readers import accounts, reader_admin
from digest.readers.signup_limits import mailbox_key
from digest.web import redact_path
from tests.conftest import NOW, make_settings

PASSWORD = "correct horse battery"


def fields(email: str, name: str = "") -> dict[str, Any]:
    return {
        "email": email,
        "name": name,
        "timezone": None,
        "morning": True,
        "evening": True,
        "sections": "",
    }


def test_the_reader_sees_and_sets_the_name_before_confirming(client, settings, sessions) -> None:
    token = accounts.form_token(settings.secret_key, NOW)
    evil = "your account is locked, sign in at evil.example"
    data = {
        "email": "victim@example.com",
        "name": evil,
        "editions": "both",
        "timezone": "UTC",
        "form_token": token,
    }
    assert client.post("/subscribe", data=data).status_code == 200
    mail = next(iter(settings.outbox_dir.glob("*.eml"))).read_text()
    path = re.search(r"https://news\.example\.com(/confirm/\S+)", mail.replace("=\n", ""))
    assert path
    page = client.get(path.group(1)).get_data(as_text=True)
    assert 'name="name"' in page and "evil.example" in page  # shown, in a field to change
    assert client.post(path.group(1), data={"name": "Vic"}).status_code == 200
    with sessions() as s:
        assert store.find_subscriber(s, "victim@example.com").name == "Vic"


def test_operator_suppression_outranks_an_earlier_unsubscribe(session, settings) -> None:
    reader = store.add_subscriber(session, "trap@example.com", NOW, status="active")
    accounts.unsubscribe(session, reader.id, NOW)
    reader_admin.suppress(session, reader.id, NOW)
    session.commit()
    assert store.suppression_reason(session, "trap@example.com") == "operator"
    for variant in ("trap@example.com", "trap+1@example.com", "TRAP+x@Example.com"):
        notice = accounts.request_subscription(session, settings, fields(variant), NOW)
        assert notice.kind == "none", variant


def test_a_complaint_covers_the_mailboxs_variants(session, settings) -> None:
    reader = store.add_subscriber(session, "john.doe@gmail.com", NOW, status="active")
    accounts.leave(session, reader.id, "complained", NOW)
    session.commit()
    for variant in ("johndoe@gmail.com", "j.o.h.n.doe+x@googlemail.com"):
        assert accounts.request_subscription(session, settings, fields(variant), NOW).kind == "none"
    assert mailbox_of("J.Doe+news@GoogleMail.com") == "jdoe@gmail.com"
    assert mailbox_key("j.doe@gmail.com") == mailbox_key("jdoe+1@googlemail.com")
    assert mailbox_of("j.doe@example.com") == "j.doe@example.com"  # dots matter elsewhere


def test_an_erased_readers_old_links_and_confirmations_do_nothing(
    client, settings, session
) -> None:
    from digest.mail.tokens import make_token, seal

    reader = store.add_subscriber(session, "gone@example.com", NOW, status="pending")
    session.commit()
    asked = {"at": str(int(NOW.timestamp() * 1000)), "name": "Eve", "editions": "both"}
    confirm = seal(settings.secret_key, "confirm", reader.id, NOW + timedelta(days=1), asked)
    prefs = make_token(settings.secret_key, "preferences", reader.id)
    reader_admin.erase(session, reader.id, NOW)
    session.commit()
    assert client.get(f"/preferences/{prefs}").status_code == 404
    assert client.post(f"/preferences/{prefs}", data={"name": "X"}).status_code == 404
    assert client.post(f"/confirm/{confirm}").status_code == 404
    session.expire_all()
    assert store.get_subscriber(session, reader.id).status == "erased"
    session.rollback()


def test_redaction_covers_doubled_slashes_and_the_reader_search() -> None:
    assert "abc.def" not in redact_path("GET //preferences//abc.def.ghi HTTP/1.1")
    assert "abc.def" not in redact_path("GET /editions//12//abc.def.ghi HTTP/1.1")
    line = redact_path("GET /admin/readers?q=victim%40example.com HTTP/1.1")
    assert "victim" not in line and "q=<redacted>" in line


def test_unicode_digits_are_not_a_500(make_app, settings, tmp_path, database_url) -> None:
    archive = make_settings(tmp_path, database_url, DIGEST_PUBLIC_ARCHIVE="1")
    client = make_app(archive).test_client()
    assert client.get("/archive?page=²").status_code == 200


@pytest.fixture
def operator_client(make_app, settings, session) -> Any:
    operators.add(session, "ed", PASSWORD, NOW)
    session.commit()
    clock = [datetime(2026, 11, 29, 10, tzinfo=UTC)]
    app = make_app(settings, clock=lambda: clock[0])
    client = app.test_client()
    assert client.post("/admin/login", data={"name": "ed", "password": PASSWORD}).status_code == 302
    client.clock = clock
    client.app_ = app
    return client


def csrf(client: Any) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get("/admin/").get_data(as_text=True))
    assert found
    return found.group(1)


def test_signing_out_ends_every_copy_of_the_session(operator_client, session) -> None:
    cookie = operator_client.get_cookie("digest_console", path="/admin")
    assert cookie is not None
    copy = operator_client.app_.test_client()
    copy.set_cookie("digest_console", cookie.value, path="/admin")
    assert copy.get("/admin/").status_code == 200
    operator_client.post("/admin/logout", data={"csrf": csrf(operator_client)})
    assert copy.get("/admin/").status_code == 302  # the stolen copy is dead too


def test_sessions_end_after_twelve_hours_and_with_a_new_password(operator_client, session) -> None:
    assert operator_client.get("/admin/").status_code == 200
    operator_client.clock[0] += timedelta(hours=11)
    assert operator_client.get("/admin/").status_code == 200  # use does not extend it...
    operator_client.clock[0] += timedelta(hours=1, minutes=1)
    assert operator_client.get("/admin/").status_code == 302  # ...past 12 hours
    operator_client.clock[0] -= timedelta(hours=12)
    operator_client.post("/admin/login", data={"name": "ed", "password": PASSWORD})
    assert operator_client.get("/admin/").status_code == 200
    operators.set_password(session, "ed", "another good password")
    session.commit()
    assert operator_client.get("/admin/").status_code == 302


def test_ipv6_clients_are_limited_per_64(make_app, tmp_path, database_url) -> None:
    limited = make_settings(tmp_path, database_url, DIGEST_SIGNUP_CLIENT_LIMIT="3 per hour")
    client = make_app(limited).test_client()
    codes = []
    for n in range(1, 6):
        data = {
            "email": f"v{n}@example.com",
            "editions": "both",
            "timezone": "UTC",
            "form_token": accounts.form_token(limited.secret_key, datetime.now(UTC)),
        }
        r = client.post("/subscribe", data=data, environ_base={"REMOTE_ADDR": f"2001:db8::{n}"})
        codes.append(r.status_code)
    assert codes == [200, 200, 200, 429, 429]


def test_strangers_cannot_lock_an_operator_out(make_app, settings, session) -> None:
    operators.add(session, "ed", PASSWORD, NOW)
    session.commit()
    client = make_app(settings).test_client()
    for n in range(6):
        r = client.post(
            "/admin/login",
            data={"name": "ed", "password": "guess"},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
        )
        assert r.status_code == 401
    r = client.post(
        "/admin/login",
        data={"name": "ed", "password": PASSWORD},
        environ_base={"REMOTE_ADDR": "198.51.100.1"},
    )
    assert r.status_code == 302
