"""The sign-up form cannot be turned into a way to mail people (issue 7, item 4).

Through the real web app and a real SMTP server: one sign-up per form token, limits per
client and per mailbox, a global hourly budget, nothing to bounced or complained
addresses, and a quiet repeat that answers no faster than a real send.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from digest import store
from digest.config import Settings, parse_smtp_url
from digest.readers import accounts
from digest.readers.signup_limits import SignupGuard, mailbox_key, storage_uri
from tests.conftest import NOW, make_settings

TZ = "Australia/Sydney"


def post(client: Any, settings: Settings, email: str, token: str | None = None, **kw: Any) -> Any:
    data = {
        "email": email,
        "name": kw.pop("name", ""),
        "editions": "both",
        "timezone": TZ,
        "form_token": token or accounts.form_token(settings.secret_key, NOW),
        **kw.pop("data_extra", {}),
    }
    return client.post("/subscribe", data=data, **kw)


@pytest.fixture
def smtp(settings: Settings, smtp_server) -> Settings:
    return settings.with_(smtp=parse_smtp_url(smtp_server[1]))


def test_one_form_token_is_good_for_one_sign_up(make_app, smtp, smtp_server, clock) -> None:
    sink, _ = smtp_server
    client = make_app(smtp, clock=clock).test_client()
    token = accounts.form_token(smtp.secret_key, NOW)
    assert post(client, smtp, "one@example.com", token).status_code == 200
    for n in range(4):
        r = post(client, smtp, f"other{n}@example.com", token)
        assert r.status_code == 422 and "sent already" in r.get_data(as_text=True)
    assert [m[1] for m in sink.messages] == [["one@example.com"]]


def test_plus_and_case_variants_share_one_mailbox_limit(make_app, smtp, smtp_server, clock) -> None:
    sink, _ = smtp_server
    client = make_app(smtp, clock=clock).test_client()
    pages = set()
    for n in range(10):
        clock.advance(minutes=11)  # past the per-address quiet window every time
        email = f"Victim+{n}@Example.com" if n % 2 else f"victim+x{n}@example.com"
        r = post(client, smtp, email)
        assert r.status_code == 200
        pages.add(r.get_data(as_text=True).replace(email.lower(), "ADDRESS"))
    assert len(sink.messages) == 3  # DIGEST_SIGNUP_MAILBOX_LIMIT: 3 per day
    assert len(pages) == 1  # the page never says which were sent
    assert mailbox_key("A.B+news@Example.COM") == mailbox_key("a.b@example.com")
    assert mailbox_key("ab@example.com") != mailbox_key("ab@example.org")


def test_per_client_limit_answers_429(make_app, settings, tmp_path, database_url, clock) -> None:
    limited = make_settings(tmp_path, database_url, DIGEST_SIGNUP_CLIENT_LIMIT="3 per hour")
    client = make_app(limited, clock=clock).test_client()
    for n in range(3):
        assert post(client, limited, f"r{n}@example.com").status_code == 200
    r = post(client, limited, "r9@example.com")
    assert r.status_code == 429 and "try again later" in r.get_data(as_text=True).lower()
    # Another client (behind no proxy here: its own address) is not affected.
    r = post(client, limited, "r9@example.com", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert r.status_code == 200


def test_global_budget_spent_asks_for_a_proof_of_work_not_a_refusal(
    make_app, tmp_path, database_url, clock
):
    import re

    from digest.readers.signup_challenge import solve

    budget = make_settings(tmp_path, database_url, DIGEST_SIGNUP_MAILS_PER_HOUR="2")
    client = make_app(budget, clock=clock).test_client()
    assert post(client, budget, "a@example.com").status_code == 200
    assert post(client, budget, "b@example.com").status_code == 200
    r = post(client, budget, "c@example.com")
    page = r.get_data(as_text=True)
    assert r.status_code == 429 and "short calculation" in page
    assert len(list(budget.outbox_dir.glob("*.eml"))) == 2
    challenge = re.search(r'name="pow_challenge" value="([^"]+)"', page)
    token = re.search(r'name="form_token" value="([^"]+)"', page)
    assert challenge and token and 'value="c@example.com"' in page  # the form, kept
    data = {
        "email": "c@example.com",
        "editions": "both",
        "timezone": TZ,
        "form_token": token.group(1),
        "pow_challenge": challenge.group(1),
        "pow_nonce": "1" if solve(challenge.group(1)) != "1" else "2",  # wrong
    }
    assert client.post("/subscribe", data=data).status_code == 429
    data["form_token"] = accounts.form_token(budget.secret_key, NOW)
    data["pow_nonce"] = solve(challenge.group(1))
    assert client.post("/subscribe", data=data).status_code == 200
    assert len(list(budget.outbox_dir.glob("*.eml"))) == 3  # the slower path sent it
    data["form_token"] = accounts.form_token(budget.secret_key, NOW)
    data["email"] = "d@example.com"
    assert client.post("/subscribe", data=data).status_code == 429  # one use per challenge


def test_a_link_from_the_readers_own_email_gets_past_strangers_requests(
    make_app, smtp, smtp_server, session, clock
) -> None:
    from digest.mail.tokens import make_token

    sink, _ = smtp_server
    reader = store.add_subscriber(session, "vic@example.com", NOW, status="unsubscribed")
    session.commit()
    client = make_app(smtp, clock=clock).test_client()
    for _ in range(3):  # strangers use up vic's daily allowance
        clock.advance(minutes=11)
        assert post(client, smtp, "vic@example.com").status_code == 200
    clock.advance(minutes=11)
    assert post(client, smtp, "vic@example.com").status_code == 200
    assert len(sink.messages) == 3
    # Vic follows "Subscribe again" from a page reached by her own email's link.
    token = make_token(smtp.secret_key, "preferences", reader.id)
    page = client.get(f"/subscribe?reader={token}").get_data(as_text=True)
    assert f'name="reader" value="{token}"' in page
    clock.advance(minutes=11)
    r = post(client, smtp, "vic@example.com", data_extra={"reader": token})
    assert r.status_code == 200 and len(sink.messages) == 4
    # The token is for vic only: it lifts nobody else's limit.
    for _ in range(4):
        clock.advance(minutes=11)
        post(client, smtp, "other@example.com", data_extra={"reader": token})
    assert len(sink.messages) == 7
    assert "reader=<redacted>" in __import__("digest.web").web.redact_path(
        f"GET /subscribe?reader={token} HTTP/1.1"
    )


@pytest.mark.parametrize("reason", ["bounced", "complained"])
def test_bounced_or_complained_address_gets_nothing_and_the_same_page(
    make_app, smtp, smtp_server, session, clock, reason
) -> None:
    sink, _ = smtp_server
    store.suppress(session, "gone@example.com", reason, NOW)
    session.commit()
    client = make_app(smtp, clock=clock).test_client()
    gone = post(client, smtp, "gone@example.com")
    new = post(client, smtp, "new@example.com")
    assert gone.status_code == new.status_code == 200
    assert gone.get_data(as_text=True).replace("gone@", "X@") == new.get_data(as_text=True).replace(
        "new@", "X@"
    )
    assert [m[1] for m in sink.messages] == [["new@example.com"]]


def test_a_quiet_repeat_takes_about_as_long_as_a_real_send(
    make_app, smtp, smtp_server, clock
) -> None:
    sink, _ = smtp_server
    sink.delay = 0.4  # a relay that takes its time over DATA
    client = make_app(smtp, clock=clock).test_client()
    started = time.monotonic()
    assert post(client, smtp, "timed@example.com").status_code == 200
    real = time.monotonic() - started
    started = time.monotonic()
    assert post(client, smtp, "timed@example.com").status_code == 200  # within 10 minutes
    quiet = time.monotonic() - started
    assert len(sink.messages) == 1 and real >= 0.4
    assert quiet >= 0.5 * real  # padded to the typical send (0.85-1.15 x the median)


def test_limits_are_shared_through_redis(make_app, tmp_path, database_url, redis_url, clock):
    shared = make_settings(tmp_path, database_url, DIGEST_REDIS_URL=redis_url)
    assert storage_uri(shared).startswith(("redis://", "redis+unix://"))
    first, second = (make_app(shared, clock=clock).test_client() for _ in range(2))
    token = accounts.form_token(shared.secret_key, NOW)
    assert post(first, shared, "shared@example.com", token).status_code == 200
    r = post(second, shared, "other@example.com", token)  # another worker, same token
    assert r.status_code == 422 and "sent already" in r.get_data(as_text=True)
    SignupGuard(shared).storage.reset()


def test_storage_uri_reads_kombu_socket_urls(settings) -> None:
    assert storage_uri(settings) == "memory://"
    sock = settings.with_(redis_url="redis+socket:///tmp/r.sock")
    assert storage_uri(sock) == "redis+unix:///tmp/r.sock"
