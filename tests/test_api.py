"""The JSON API (/api/v1): the document, token scopes, problem details, sign-up
limits, CORS, the audit log, imports, and the CLI and console for tokens."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from openapi_spec_validator import validate

from digest import store
from digest.cli import cli
from digest.models import Delivery, Edition
from digest.operations import api_tokens
from digest.operations.operators import recent
from digest.store import readers_query
from tests.conftest import make_settings


def _token(session: Any, name: str, scope: str, now: Any) -> str:
    _, raw = api_tokens.add(session, name, scope, now, "test")
    session.commit()
    return raw


def auth(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


@pytest.fixture
def tokens(session: Any, now: Any) -> dict[str, str]:
    return {scope: _token(session, f"t-{scope}", scope, now) for scope in api_tokens.SCOPES}


def test_the_document_is_valid_openapi_3_1(client: Any) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    ids = {op["operationId"] for path in doc["paths"].values() for op in path.values()}
    assert {"create_signup", "list_readers", "push_articles", "plan_edition"} <= ids


def test_the_docs_page_is_served_from_here(client: Any) -> None:
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "https://" not in html  # no CDN
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    bundle = client.get("/api/v1/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and b"SwaggerUIBundle" in bundle.get_data()
    bundle.close()
    assert client.get("/api/v1/docs/assets/secret_key").status_code == 404


@pytest.mark.parametrize(
    ("scope", "method", "path", "body", "status"),
    [
        ("subscribe", "get", "/api/v1/readers", None, 403),
        ("subscribe", "get", "/api/v1/editions", None, 403),
        ("subscribe", "post", "/api/v1/signups", {"email": "a@example.com"}, 202),
        ("read", "get", "/api/v1/readers", None, 200),
        ("read", "post", "/api/v1/readers", {"email": "a@example.com", "confirmed": True}, 403),
        (
            "read",
            "post",
            "/api/v1/articles",
            {"articles": [{"title": "t", "url": "https://x.example.com/"}]},
            403,
        ),  # noqa: E501
        ("read", "post", "/api/v1/signups", {"email": "a@example.com"}, 403),
        ("write", "post", "/api/v1/readers", {"email": "a@example.com", "confirmed": True}, 201),
    ],
)
def test_scopes(
    client: Any,
    tokens: dict[str, str],
    scope: str,
    method: str,
    path: str,
    body: Any,
    status: int,
) -> None:
    response = getattr(client, method)(path, json=body, headers=auth(tokens[scope]))
    assert response.status_code == status, response.get_data(as_text=True)
    if status >= 400:
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["status"] == status


def test_no_token_or_a_revoked_one_is_refused_at_once(
    client: Any, tokens: dict[str, str], session: Any, now: Any
) -> None:
    assert client.get("/api/v1/readers").status_code == 401
    assert client.get("/api/v1/readers", headers=auth("dgt_made-up")).status_code == 401
    raw = tokens["read"]
    assert client.get("/api/v1/readers", headers=auth(raw)).status_code == 200
    api_tokens.revoke(session, "t-read", now, "test")
    session.commit()
    refused = client.get("/api/v1/readers", headers=auth(raw))
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")


def test_tokens_are_stored_only_as_hashes(session: Any, tokens: dict[str, str]) -> None:
    rows = api_tokens.tokens(session)
    for row in rows:
        assert row.token_hash not in tokens.values()
        assert row.token_hash == api_tokens.hash_token(tokens[row.scope])


def test_errors_are_problem_details_naming_the_field(client: Any, tokens: dict[str, str]) -> None:
    h = auth(tokens["write"])
    bad = client.post("/api/v1/readers", json={"email": "nope"}, headers=h)
    assert bad.status_code == 400 and bad.mimetype == "application/problem+json"
    assert bad.get_json()["errors"][0]["field"] == "email"
    typed = client.post("/api/v1/readers", json={"email": 5}, headers=h)
    assert typed.status_code == 400 and typed.get_json()["errors"][0]["field"] == "email"
    assert (
        client.post(
            "/api/v1/readers", data="{", headers=h, content_type="application/json"
        ).status_code
        == 400
    )
    assert client.post("/api/v1/readers", data="x", headers=h).status_code == 415
    typo = client.get("/api/v1/readers?limt=5", headers=h).get_json()
    assert typo["errors"][0]["field"] == "limt"
    assert client.get("/api/v1/nowhere", headers=h).status_code == 404
    assert client.delete("/api/v1/readers", headers=h).status_code == 405
    assert client.get("/api/v1/readers/99999999999", headers=h).status_code == 404
    twice = {"email": "b@example.com", "confirmed": True}
    assert client.post("/api/v1/readers", json=twice, headers=h).status_code == 201
    assert client.post("/api/v1/readers", json=twice, headers=h).status_code == 409


def test_writes_are_audited_under_the_tokens_name(
    client: Any, tokens: dict[str, str], session: Any
) -> None:
    h = auth(tokens["write"])
    made = client.post(
        "/api/v1/readers", json={"email": "c@example.com", "confirmed": True}, headers=h
    ).get_json()
    assert client.post(f"/api/v1/readers/{made['id']}/unsubscribe", headers=h).status_code == 200
    entries = [(e.operator, e.action) for e in recent(session, 10)]
    assert ("api:t-write", "added reader") in entries
    assert ("api:t-write", "unsubscribed") in entries


def test_readers_list_pages_by_keyset_and_filters(client: Any, tokens: dict[str, str]) -> None:
    h = auth(tokens["write"])
    for i in range(5):
        body = {
            "email": f"r{i}@example.com",
            "confirmed": True,
            "editions": "morning" if i % 2 else "both",
        }
        client.post("/api/v1/readers", json=body, headers=h)
    first = client.get("/api/v1/readers?limit=2", headers=h).get_json()
    assert len(first["items"]) == 2 and first["next_after"] == first["items"][-1]["id"]
    rest = client.get(f"/api/v1/readers?limit=10&after={first['next_after']}", headers=h)
    assert len(rest.get_json()["items"]) == 3 and rest.get_json()["next_after"] is None
    one = client.get("/api/v1/readers?email=R3@example.com", headers=h).get_json()["items"]
    assert [r["email"] for r in one] == ["r3@example.com"]
    evening = client.get("/api/v1/readers?edition=evening", headers=h).get_json()["items"]
    assert {r["email"] for r in evening} == {"r0@example.com", "r2@example.com", "r4@example.com"}


def _seed_readers(session: Any, now: Any) -> dict[str, int]:
    """Four readers who differ in every way the console's filters look at."""
    days = timedelta(days=1)
    rows = [
        (
            "ana@example.com",
            "Ana Lima",
            "active",
            "Europe/London",
            (True, False),
            "sport",
            "web form, requested 2026-11-26, confirmed 2026-11-26",
            now - 10 * days,
        ),
        ("bo@example.com", "Bo", "pending", None, (True, True), "", "cli", now - 5 * days),
        (
            "cy@example.com",
            "Cy",
            "unsubscribed",
            "Europe/London",
            (False, True),
            "news",
            "api via t-write, 2026-12-05T12:00Z",
            now - days,
        ),
        ("di@example.com", "Di", "bounced", None, (True, True), "", "import list.csv", now),
    ]
    ids = {}
    for email, name, status, tz, (morning, evening), sections, consent, at in rows:
        reader = store.add_subscriber(
            session,
            email,
            at,
            name=name,
            status=status,
            timezone=tz,
            morning=morning,
            evening=evening,
            sections=sections,
            consent=consent,
        )
        ids[email.split("@")[0]] = reader.id
    for slot, status, sent in (("morning", "sent", True), ("evening", "failed", False)):
        edition = Edition(
            slot=slot,
            local_day=(now - 3 * days).date(),
            timezone="UTC",
            status="done",
            send_at=now,
            window_start=now,
            window_end=now,
            created_at=now,
        )
        session.add(edition)
        session.flush()
        session.add(
            Delivery(
                edition_id=edition.id,
                subscriber_id=ids["ana"],
                status=status,
                queued_at=now,
                sent_at=now - 3 * days if sent else None,
            )
        )
        session.add(
            Delivery(edition_id=edition.id, subscriber_id=ids["bo"], status="failed", queued_at=now)
        )
    session.commit()
    return ids


def test_readers_list_has_the_consoles_filters(
    client: Any, tokens: dict[str, str], session: Any, now: Any
) -> None:
    _seed_readers(session, now)
    h = auth(tokens["read"])

    def names(query: str) -> tuple[list[str], int]:
        response = client.get(f"/api/v1/readers?{query}", headers=h)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        return [r["email"].split("@")[0] for r in body["items"]], body["total"]

    def day(ago: int) -> str:
        return (now - timedelta(days=ago)).date().isoformat()

    cases = {
        "": (["ana", "bo", "cy", "di"], 4),
        "status=active,pending": (["ana", "bo"], 2),
        "status=active&status=unsubscribed": (["ana", "cy"], 2),
        "timezone=Europe/London": (["ana", "cy"], 2),
        "timezone=default": (["bo", "di"], 2),
        "editions=morning": (["ana", "bo", "di"], 3),
        "editions=both": (["bo", "di"], 2),
        "edition=evening": (["bo", "cy", "di"], 3),  # the older name still works
        "section=Sport": (["ana", "bo", "di"], 3),  # "all sections" readers get sport too
        "source=api": (["cy"], 1),
        "source=cli": (["bo"], 1),
        f"signed_up_from={day(5)}&signed_up_to={day(1)}": (["bo", "cy"], 2),
        f"signed_up_from={day(0)}": (["di"], 1),
        "last_delivery=7d": (["ana"], 1),
        "last_delivery=never": (["bo", "cy", "di"], 3),
        "min_failures=2": (["bo"], 1),
        "min_failures=1&status=active": (["ana"], 1),
        "q=LIMA": (["ana"], 1),  # the name, any case
        "q=y@exa": (["cy"], 1),
        "email=Ana@Example.com": (["ana"], 1),
        "email=ana@example.co": ([], 0),  # exactly, not "contains"
        "sort=email&order=desc": (["di", "cy", "bo", "ana"], 4),
        "sort=created&order=desc&limit=2": (["di", "cy"], 4),
        "sort=created&status=active,bounced": (["ana", "di"], 2),
        "status=erased": ([], 0),
    }
    for query, expected in cases.items():
        assert names(query) == expected, query


def test_readers_list_lists_erased_readers_only_when_asked(
    client: Any, tokens: dict[str, str], session: Any, now: Any
) -> None:
    ids = _seed_readers(session, now)
    h = auth(tokens["write"])
    assert client.post(f"/api/v1/readers/{ids['di']}/erase", headers=h).status_code == 200
    every = client.get("/api/v1/readers", headers=h).get_json()
    assert every["total"] == 3 and ids["di"] not in [r["id"] for r in every["items"]]
    erased = client.get("/api/v1/readers?status=erased", headers=h).get_json()
    assert [r["id"] for r in erased["items"]] == [ids["di"]]


@pytest.mark.parametrize(
    "order", ["", "sort=created&order=desc", "sort=email", "sort=email&order=desc"]
)
def test_readers_pages_stay_put_while_readers_sign_up(
    client: Any, tokens: dict[str, str], session: Any, now: Any, order: str
) -> None:
    for i in range(7):
        store.add_subscriber(session, f"m{i}@example.com", now + timedelta(minutes=i))
    session.commit()
    h = auth(tokens["read"])
    first = client.get(f"/api/v1/readers?limit=3&{order}", headers=h).get_json()
    assert first["total"] == 7 and len(first["items"]) == 3
    seen = [r["email"] for r in first["items"]]
    after, added = first["next_after"], 0
    while after is not None:
        # Before each page, readers sign up who sort first (a…) and last (z…, newest).
        for prefix in ("a", "z"):
            store.add_subscriber(
                session, f"{prefix}{added}@example.com", now + timedelta(hours=1, minutes=added)
            )
            added += 1
        session.commit()
        page = client.get(f"/api/v1/readers?limit=3&after={after}&{order}", headers=h).get_json()
        assert page["total"] == 7 + added
        seen += [r["email"] for r in page["items"]]
        after = page["next_after"]
    assert len(seen) == len(set(seen))  # no reader twice
    assert {f"m{i}@example.com" for i in range(7)} <= set(seen)  # and none skipped
    originals = [e for e in seen if e.startswith("m")]
    ascending = [f"m{i}@example.com" for i in range(7)]
    assert originals == (ascending[::-1] if "desc" in order else ascending)
    if not order:  # by id: those who signed up meanwhile come at the end, in order
        assert seen[:7] == [f"m{i}@example.com" for i in range(7)]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=gone", "status"),
        ("status=active&status=active,gone", "status"),
        ("editions=noon", "editions"),
        ("signed_up_from=2026-02-30", "signed_up_from"),  # the shape passes, parse_filter not
        ("signed_up_from=30/11/2026", "signed_up_from"),
        ("signed_up_from=2026-12-02&signed_up_to=2026-12-01", "signed_up_from"),
        ("timezone=Europe/London'", "timezone"),
        ("min_failures=-1", "min_failures"),
        ("min_failures=two", "min_failures"),
        ("source=fax", "source"),
        ("last_delivery=yesterday", "last_delivery"),
        ("sort=name", "sort"),
        ("order=up", "order"),
        ("edition=morning&editions=evening", "edition"),
        ("sort=created&after=999999", "after"),
        ("after=-1", "after"),
        ("email=a@example.com&email=b@example.com", "email"),  # which one?
    ],
)
def test_a_bad_reader_filter_is_a_400_naming_it(
    client: Any, tokens: dict[str, str], query: str, field: str
) -> None:
    response = client.get(f"/api/v1/readers?{query}", headers=auth(tokens["read"]))
    assert response.status_code == 400 and response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["errors"][0]["field"] == field, problem
    assert field in problem["detail"]


def test_the_documented_reader_filters_are_the_consoles(client: Any) -> None:
    """The OpenAPI document offers exactly the values readers_query accepts."""
    doc = client.get("/api/v1/openapi.json").get_json()
    params = {p["name"]: p for p in doc["paths"]["/readers"]["get"]["parameters"]}

    def enum(name: str) -> set[str]:
        schema = params[name]["schema"]
        options = [s for s in schema.get("anyOf", [schema]) if "enum" in s]
        return set(options[0]["enum"])

    assert enum("source") == set(readers_query.SOURCES)
    assert enum("last_delivery") == set(readers_query.LAST_DELIVERY)
    assert enum("editions") == set(readers_query.EDITIONS)
    assert enum("sort") == set(readers_query.SORTS)
    pattern = params["status"]["schema"]["items"]["pattern"]
    assert all(status in pattern for status in readers_query.STATUSES)
    assert params["edition"]["deprecated"] is True


def _limited_app(make_app: Any, tmp_path: Path, database_url: str, clock: Any, **env: str) -> Any:
    settings = make_settings(tmp_path, database_url, **env)
    return make_app(settings, clock=clock), settings


def test_signup_limits_per_end_client_through_the_api(
    make_app: Any, tmp_path: Path, sqlite_url: str, clock: Any
) -> None:
    app, settings = _limited_app(
        make_app,
        tmp_path,
        sqlite_url,
        clock,
        DIGEST_SIGNUP_CLIENT_LIMIT="2 per hour",
        DIGEST_API_CLIENT_HEADER="X-Client-IP",
    )
    with app.extensions["digest"].sessions() as session:
        sub = _token(session, "site", "subscribe", clock())
        write = _token(session, "cms", "write", clock())
    c = app.test_client()

    def signup(n: int, client_ip: str, raw: str = sub) -> int:
        headers = {**auth(raw), "X-Client-IP": client_ip}
        return int(
            c.post(
                "/api/v1/signups", json={"email": f"s{n}@example.com"}, headers=headers
            ).status_code
        )

    assert [signup(1, "203.0.113.5"), signup(2, "203.0.113.5")] == [202, 202]
    limited = c.post(
        "/api/v1/signups",
        json={"email": "s3@example.com"},
        headers={**auth(sub), "X-Client-IP": "203.0.113.5"},
    )
    assert limited.status_code == 429 and limited.mimetype == "application/problem+json"
    assert signup(4, "198.51.100.7") == 202  # another visitor of the same site
    # Only a subscribe token's header is believed: a write token counts as its caller.
    assert [signup(5, "192.0.2.1", write), signup(6, "192.0.2.2", write)] == [202, 202]
    assert signup(7, "192.0.2.3", write) == 429


def test_signup_mailbox_limit_and_budget_through_the_api(
    make_app: Any, tmp_path: Path, sqlite_url: str, clock: Any
) -> None:
    app, settings = _limited_app(
        make_app,
        tmp_path,
        sqlite_url,
        clock,
        DIGEST_SIGNUP_MAILBOX_LIMIT="1 per day",
        DIGEST_SIGNUP_MAILS_PER_HOUR="2",
    )
    with app.extensions["digest"].sessions() as session:
        sub = _token(session, "site", "subscribe", clock())
    c = app.test_client()
    outbox = settings.outbox_dir

    def sent() -> int:
        return len(list(outbox.glob("*.eml"))) if outbox.exists() else 0

    assert (
        c.post("/api/v1/signups", json={"email": "m@example.com"}, headers=auth(sub)).status_code
        == 202
    )  # noqa: E501
    clock.advance(minutes=20)
    again = c.post("/api/v1/signups", json={"email": "M+x@example.com"}, headers=auth(sub))
    assert again.status_code == 202 and sent() == 1  # same answer, no second email
    assert (
        c.post("/api/v1/signups", json={"email": "n@example.com"}, headers=auth(sub)).status_code
        == 202
    )  # noqa: E501
    assert sent() == 2
    over = c.post("/api/v1/signups", json={"email": "o@example.com"}, headers=auth(sub))
    assert over.status_code == 429 and sent() == 2


def test_cors_only_for_signups_from_listed_origins(
    make_app: Any, tmp_path: Path, sqlite_url: str, clock: Any
) -> None:
    app, _ = _limited_app(
        make_app, tmp_path, sqlite_url, clock, DIGEST_API_CORS_ORIGINS="https://www.example.com"
    )
    c = app.test_client()
    ok = c.options("/api/v1/signups", headers={"Origin": "https://www.example.com"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    other = c.options("/api/v1/signups", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    readers = c.options("/api/v1/readers", headers={"Origin": "https://www.example.com"})
    assert "Access-Control-Allow-Origin" not in readers.headers


def test_cors_is_off_by_default(client: Any) -> None:
    pre = client.options("/api/v1/signups", headers={"Origin": "https://www.example.com"})
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_articles_push_is_idempotent_on_guid(
    client: Any, tokens: dict[str, str], session: Any
) -> None:  # noqa: E501
    h = auth(tokens["write"])
    body = {
        "articles": [
            {"title": "Storm", "url": "https://news.example.com/storm", "guid": "cms-1"},
            {"title": "", "url": "https://news.example.com/empty"},
        ]
    }
    first = client.post("/api/v1/articles", json=body, headers=h).get_json()
    assert first["added"] == 1 and first["errors"][0]["index"] == 2
    body["articles"][0]["url"] = "https://news.example.com/storm-moved"
    again = client.post("/api/v1/articles", json=body, headers=h).get_json()
    assert again["added"] == 0 and again["existing"] == 1
    listed = client.get("/api/v1/articles", headers=h).get_json()["items"]
    article = next(a for a in listed if a["guid"] == "cms-1")
    hidden = client.patch(
        f"/api/v1/articles/{article['id']}", json={"hidden": True, "priority": 5}, headers=h
    ).get_json()
    assert hidden["hidden"] is True and hidden["priority"] == 5


def test_an_import_of_10000_rows_reports_the_bad_row(
    client: Any, tokens: dict[str, str], session: Any
) -> None:
    lines = ["email,name"] + [f"reader{i}@example.com,Reader {i}" for i in range(10_000)]
    lines[5001] = "not-an-address,Bad Row"
    body = "\n".join(lines) + "\n"
    started = client.post(
        "/api/v1/readers/imports?confirmed=true",
        data=body,
        content_type="text/csv",
        headers=auth(tokens["write"]),
    )
    assert started.status_code == 202, started.get_data(as_text=True)
    job_id = started.get_json()["id"]
    deadline = time.monotonic() + 60
    while True:
        job = client.get(f"/api/v1/readers/imports/{job_id}", headers=auth(tokens["read"]))
        job = job.get_json()
        if job["status"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["status"] == "done", job
    report = job["report"]
    assert report["added"] == 9_999
    assert report["errors"] == [
        {"line": 5002, "error": "address 'not-an-address' must contain exactly one @"}
    ]
    assert store.count_subscribers(session).get("active") == 9_999


def test_a_jsonl_import_reports_each_bad_line(client: Any, tokens: dict[str, str]) -> None:
    body = "\n".join(
        [
            json.dumps({"email": "j1@example.com", "sections": ["world"]}),
            "{broken",
            json.dumps({"email": "j2@example.com", "name": 5}),
        ]
    )
    started = client.post(
        "/api/v1/readers/imports",
        data=body,
        headers=auth(tokens["write"]),
        content_type="application/x-ndjson",
    ).get_json()
    for _ in range(100):
        job = client.get(
            f"/api/v1/readers/imports/{started['id']}", headers=auth(tokens["write"])
        ).get_json()
        if job["status"] == "done":
            break
        time.sleep(0.05)
    assert job["report"]["added"] == 1
    assert [e["line"] for e in job["report"]["errors"]] == [2, 3]


def test_cli_api_tokens(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import digest.cli
    import digest.db

    engines: list[Any] = []

    def make_engine(url: str, **kwargs: Any) -> Any:
        engines.append(digest.db.make_engine(url, **kwargs))
        return engines[-1]

    monkeypatch.setattr(digest.cli, "make_engine", make_engine)
    env = {
        "DIGEST_DATABASE_URL": settings.database_url,
        "DIGEST_DATA_DIR": str(settings.data_dir),
        "DIGEST_SECRET_KEY": "test-secret-key",
    }

    def invoke(*args: str) -> Any:
        try:
            return CliRunner(env=env).invoke(cli, list(args))
        finally:
            while engines:
                engines.pop().dispose()

    made = invoke("api-tokens", "add", "website", "--scope", "subscribe")
    assert made.exit_code == 0, made.output
    assert made.stdout.strip().startswith("dgt_")
    listed = invoke("api-tokens", "list")
    assert "website\tsubscribe" in listed.output and made.stdout.strip() not in listed.output
    bad = invoke("api-tokens", "add", "x y", "--scope", "read")
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert invoke("api-tokens", "revoke", "website").exit_code == 0
    assert "revoked" in invoke("api-tokens", "list").output
    assert invoke("api-tokens", "revoke", "nobody").exit_code == 1


def test_console_makes_lists_and_revokes_tokens(
    make_app: Any, settings: Any, session: Any, clock: Any
) -> None:
    import re

    from digest.operations import operators

    operators.add(session, "ed", "correct horse battery", clock())
    session.commit()
    app = make_app(settings, clock=clock)
    c = app.test_client()
    assert (
        c.post("/admin/login", data={"name": "ed", "password": "correct horse battery"}).status_code
        == 302
    )
    page = c.get("/admin/api-tokens").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    assert token
    made = c.post(
        "/admin/api-tokens", data={"csrf": token.group(1), "name": "website", "scope": "subscribe"}
    )
    raw = re.search(r'<code id="new-token">([^<]+)</code>', made.get_data(as_text=True))
    assert made.status_code == 200 and raw
    api = app.test_client()
    signup = {"email": "p@example.com"}
    assert api.post("/api/v1/signups", json=signup, headers=auth(raw.group(1))).status_code == 202
    listed = c.get("/admin/api-tokens").get_data(as_text=True)
    assert "website" in listed and raw.group(1) not in listed  # shown once only
    revoked = c.post("/admin/api-tokens/website/revoke", data={"csrf": token.group(1)})
    assert revoked.status_code == 302
    assert api.post("/api/v1/signups", json=signup, headers=auth(raw.group(1))).status_code == 401
    entries = [(e.operator, e.action) for e in recent(session, 10)]
    assert ("ed", "api token added") in entries and ("ed", "api token revoked") in entries


def test_requests_are_limited_per_token(
    make_app: Any, tmp_path: Path, sqlite_url: str, clock: Any
) -> None:
    app, _ = _limited_app(
        make_app, tmp_path, sqlite_url, clock, DIGEST_API_RATE_LIMIT="3 per minute"
    )
    with app.extensions["digest"].sessions() as session:
        busy, other = (
            _token(session, "busy", "read", clock()),
            _token(session, "calm", "read", clock()),
        )  # noqa: E501
    c = app.test_client()
    codes = [c.get("/api/v1/feeds", headers=auth(busy)).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = c.get("/api/v1/feeds", headers=auth(busy))
    assert limited.mimetype == "application/problem+json" and limited.get_json()["status"] == 429
    assert c.get("/api/v1/feeds", headers=auth(other)).status_code == 200


def test_a_large_push_fits_but_a_huge_one_is_a_413(client: Any, tokens: dict[str, str]) -> None:
    h = auth(tokens["write"])
    articles = [
        {"title": f"Story {i}", "url": f"https://news.example.com/{i}", "summary": "x" * 400}
        for i in range(400)
    ]
    assert (
        client.post("/api/v1/articles", json={"articles": articles}, headers=h).status_code == 200
    )  # noqa: E501
    huge = '{"articles": [{"title": "t", "url": "' + "u" * (9 * 2**20) + '"}]}'
    too_big = client.post("/api/v1/articles", data=huge, content_type="application/json", headers=h)
    assert too_big.status_code == 413 and too_big.mimetype == "application/problem+json"


def test_signups_count_against_the_token_limit_too(
    make_app: Any, tmp_path: Path, sqlite_url: str, clock: Any
) -> None:
    app, _ = _limited_app(
        make_app, tmp_path, sqlite_url, clock, DIGEST_API_RATE_LIMIT="2 per minute"
    )
    with app.extensions["digest"].sessions() as session:
        sub = _token(session, "site", "subscribe", clock())
    c = app.test_client()
    codes = [
        c.post(
            "/api/v1/signups", json={"email": f"t{i}@example.com"}, headers=auth(sub)
        ).status_code
        for i in range(3)
    ]
    assert codes == [202, 202, 429]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DIGEST_API_CLIENT_HEADER", "X Client: IP"),
        ("DIGEST_API_CORS_ORIGINS", "https://www.example.com/path"),
        ("DIGEST_API_CORS_ORIGINS", "*"),
    ],
)
def test_bad_api_settings_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    from digest.errors import ConfigError

    with pytest.raises(ConfigError, match=name):
        make_settings(tmp_path, "sqlite://", **{name: value})


def test_a_bad_api_rate_limit_stops_the_app_naming_it(
    make_app: Any, tmp_path: Path, sqlite_url: str
) -> None:
    from digest.errors import ConfigError

    with pytest.raises(ConfigError, match="DIGEST_API_RATE_LIMIT"):
        make_app(make_settings(tmp_path, sqlite_url, DIGEST_API_RATE_LIMIT="lots"))


def test_planning_through_the_api_obeys_the_guard_and_is_audited(
    client: Any, tokens: dict[str, str], session: Any, now: Any
) -> None:
    """The API is a third face, not a side door: a day still ahead is refused even with
    force (only the CLI and the console may force one), and both the refusal and a plan
    are in the audit log under the token's name with the origin "api"."""
    h = auth(tokens["write"])
    client.post(
        "/api/v1/readers",
        json={"email": "p@example.com", "confirmed": True, "timezone": "Australia/Sydney"},
        headers=h,
    )
    ahead = {"slot": "morning", "timezone": "Australia/Sydney", "day": "2026-12-25", "force": True}
    refused = client.post("/api/v1/editions/plan", json=ahead, headers=h)
    assert refused.status_code == 422, refused.get_json()
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert store.find_edition(session, store_cohort("morning", "2026-12-25")) is None
    entries = [(e.operator, e.action, e.detail) for e in recent(session, 10)]
    assert any(
        op == "t-write" or op == "api:t-write"
        for op, action, _ in entries
        if action == "plan refused"
    )
    assert any("[api]" in detail for _, action, detail in entries if action == "plan refused")


def store_cohort(slot: str, day: str) -> Any:
    from datetime import date

    from digest.models import Cohort

    return Cohort(slot, date.fromisoformat(day), "Australia/Sydney")
