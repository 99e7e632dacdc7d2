"""The console's returned-mail page: recent bounces and complaints with their reasons,
editions and soft-bounce counts, filters by kind and date, and an audited un-suppress."""

from __future__ import annotations

from datetime import timedelta

from digest import store
from digest.readers.returned import SoftRule, act
from tests.test_console import AT, audit, console, csrf, reader_row  # noqa: F401 - fixture

RULE = SoftRule()


def test_returned_mail_page_filters_and_unsuppresses(console, session) -> None:  # noqa: F811
    gone_row = store.add_subscriber(session, "gone@example.org", AT, status="active")
    full_row = store.add_subscriber(session, "full@example.org", AT, status="active")
    left_row = store.add_subscriber(session, "left@example.org", AT, status="active")
    session.flush()
    gone, full, left = gone_row.id, full_row.id, left_row.id
    act(
        session,
        gone,
        "hard",
        "status 5.1.1 (unknown user) <b>x</b>",
        "pipe",
        AT - timedelta(days=2),
        RULE,
    )
    act(session, full, "soft", "SES Transient bounce", "ses", AT - timedelta(hours=2), RULE)
    act(session, full, "soft", "SES Transient bounce", "ses", AT - timedelta(hours=1), RULE)
    act(session, left, "unsubscribe", "unsubscribe request by email", "pipe", AT, RULE)
    session.commit()
    session.rollback()

    page = console.get("/admin/returned").get_data(as_text=True)
    assert "gone@example.org" in page and "full@example.org" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page  # report text is escaped
    assert "<td>2</td>" in page  # full@ has two soft bounces counted
    hard_only = console.get("/admin/returned?kind=hard").get_data(as_text=True)
    assert "gone@example.org" in hard_only and "full@example.org" not in hard_only
    recent = console.get(f"/admin/returned?since={AT.date().isoformat()}").get_data(as_text=True)
    assert "gone@example.org" not in recent and "left@example.org" in recent
    assert console.get("/admin/returned?since=junk&kind=<x>").status_code == 200

    token = csrf(console, "/admin/returned")
    assert console.post(f"/admin/returned/{gone}/unsuppress").status_code in (302, 400, 403)
    assert reader_row(session, gone).status == "bounced"  # no CSRF token: nothing done
    r = console.post(f"/admin/returned/{gone}/unsuppress", data={"csrf": token})
    assert r.status_code == 302
    assert reader_row(session, gone).status == "active"
    assert store.suppression_reason(session, "gone@example.org") is None
    session.rollback()
    assert ("ed", "un-suppressed", f"reader {gone} (g***@example.org)") in audit(session)
    # An unsubscribed reader is not taken back by an operator.
    r = console.post(f"/admin/returned/{left}/unsuppress", data={"csrf": token})
    assert reader_row(session, left).status == "unsubscribed"


def test_unsuppress_restarts_the_soft_count(session) -> None:
    from digest.readers.returned import unsuppress

    sid = store.add_subscriber(session, "s@example.org", AT, status="active").id
    for hours in (1, 2, 3):
        act(session, sid, "soft", "full", "pipe", AT + timedelta(hours=hours), RULE)
    assert store.get_subscriber(session, sid).status == "bounced"
    unsuppress(session, sid, AT + timedelta(hours=4))
    outcome = act(session, sid, "soft", "full", "pipe", AT + timedelta(hours=5), RULE)
    assert "soft bounce 1 of 3" in outcome
