"""Schemathesis against the live API (a real server thread on loopback, SQLite, the
outbox transport): every operation with a write token for a bounded number of generated
requests, plus the document's links as a state machine. No 5xx; every response, error
or not, conforms to the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from digest.db import make_engine, make_sessionmaker, upgrade
from digest.operations import api_tokens
from tests.conftest import add_articles, make_settings


def invalid_data_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection, with 413 counted as a rejection (a body over the size
    limit is refused before its content is read)."""
    if response.status_code == 413:
        return True
    return negative_data_rejection(ctx, response, case)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    invalid_data_rejected,
]
TOKEN: dict[str, str] = {}


@schemathesis.serializer("text/csv", "application/x-ndjson", "application/jsonl")
def _text(ctx: Any, value: Any) -> dict[str, Any]:
    data = value if isinstance(value, bytes) else str(value).encode("utf-8")
    return {"data": data}


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One live app for the module: a write token, a reader, articles and an edition."""
    import threading

    from werkzeug.serving import make_server

    from digest.web import create_app

    tmp: Path = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{tmp / 'digest.db'}"
    upgrade(url)
    settings_ = make_settings(
        tmp,
        url,
        DIGEST_API_RATE_LIMIT="100000 per minute",
        DIGEST_SIGNUP_CLIENT_LIMIT="100000 per hour",
        DIGEST_SIGNUP_MAILBOX_LIMIT="100000 per day",
        DIGEST_SIGNUP_MAILS_PER_HOUR="100000",
        DIGEST_FEED_TIMEOUT="1",
        DIGEST_ALLOW_PRIVATE_FEEDS="0",
    )
    engine = make_engine(url)
    now = datetime.now(UTC)
    with make_sessionmaker(engine)() as session:
        _, raw = api_tokens.add(session, "fuzz", "write", now, "test")
        add_articles(session, now, [("Rain", "news"), ("Goal", "sport")])
        session.commit()
    engine.dispose()
    TOKEN["raw"] = raw
    app = create_app(settings_)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_port}"
    import requests

    headers = {"Authorization": f"Bearer {raw}"}
    requests.post(
        f"{base}/api/v1/readers",
        json={"email": "ana@example.com", "confirmed": True},
        headers=headers,
        timeout=10,
    )
    requests.post(
        f"{base}/api/v1/editions/plan", json={"slot": "morning"}, headers=headers, timeout=10
    )
    yield base
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
    app.extensions["digest"].engine.dispose()


@pytest.fixture(scope="module")
def api_schema(api_server: str) -> Any:
    return schemathesis.openapi.from_url(f"{api_server}/api/v1/openapi.json")


FUZZ = settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def test_every_operation_conforms(api_schema: Any) -> None:
    """Each operation in turn (schemathesis' pytest plugin cannot take a fixture's schema
    under this pytest), with generated valid and invalid requests."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 20
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    # A text body (CSV, JSON lines) has no wrong type on the wire: positive data only.
    runs = [
        (op, mode)
        for op in operations
        for mode in modes
        if mode == modes[0] or all(b.media_type == "application/json" for b in op.body)
    ]
    for operation, mode in runs:

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN['raw']}"}, checks=CHECKS, timeout=30
            )

        run()


def test_links_as_a_state_machine(api_schema: Any) -> None:
    machine = api_schema.as_state_machine()
    seen: list[str] = []

    class Workflow(machine):  # type: ignore[misc,valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {"Authorization": f"Bearer {TOKEN['raw']}"}, "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            seen.append(case.operation.label)
            case.validate_response(response, checks=CHECKS[:4])

    Workflow.run(settings=settings(FUZZ, max_examples=15, stateful_step_count=6))
    # Steps went from a created resource to an operation on it, through a link.
    assert any("{" in label for label in seen), sorted(set(seen))
