"""Flower on loopback, behind basic auth: its API sends an edition through the workers."""

from __future__ import annotations

import base64
import json
import sys
import urllib.error
import urllib.request
from collections import Counter
from datetime import timedelta
from typing import Any

from tests.conftest import free_port, wait_for
from tests.test_workers import LONDON, TICK, delivery_counts, recipients, seed

USER, PASSWORD = "ops", "correct horse battery staple"


def call(url: str, body: dict[str, Any] | None = None, auth: bool = True) -> tuple[int, Any]:
    request = urllib.request.Request(url, method="POST" if body is not None else "GET")
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    if auth:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
            if response.headers.get_content_type() == "application/json":
                return response.status, json.loads(data)
            return response.status, data.decode()
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, None


def test_flower_api_sends_an_edition(
    sqlite_url, smtp_server, worker_env, start_worker, spawn
) -> None:
    sink, smtp_url = smtp_server
    readers = {f"f{i}@example.com": LONDON for i in range(3)}
    seed(sqlite_url, readers, [TICK - timedelta(hours=1)])
    env = worker_env(sqlite_url, smtp_url)
    start_worker(env)
    port = free_port()
    flower = spawn(
        "flower",
        [sys.executable, "-m", "celery", "-A", "workers.app", "flower"]
        + ["--address=127.0.0.1", f"--port={port}"],
        {**env, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not flower.alive():
            raise AssertionError(f"flower exited:\n{flower.output()[-3000:]}")
        try:
            return call(f"{base}/healthcheck", auth=False)[0] == 200
        except OSError:
            return False

    wait_for(up, 40, "Flower to listen", interval=0.2)
    apply = f"{base}/api/task/async-apply/digest.plan_edition"
    body = {"args": ["morning"], "kwargs": {"timezone": LONDON, "now": TICK.isoformat()}}

    assert call(apply, body, auth=False)[0] == 401
    status, reply = call(apply, body)
    assert status == 200, reply
    task_id = reply["task-id"]

    wait_for(lambda: delivery_counts(sqlite_url) == {"sent": 3}, 30, "the edition to be sent")
    assert recipients(sink) == Counter({email: 1 for email in readers})
    status, result = call(f"{base}/api/task/result/{task_id}")
    assert status == 200 and result["state"] == "SUCCESS", result
    [edition] = result["result"]["editions"]
    assert edition["cohort"] == f"morning 2026-11-29 {LONDON}" and edition["queued"] == 3
    assert call(f"{base}/api/task/async-apply/digest.nonexistent", {})[0] == 404

    def seen_by_flower() -> bool:
        # Flower's task list comes from worker events alone (task events are on).
        status, tasks = call(f"{base}/api/tasks?taskname=digest.send_batch")
        return status == 200 and any(t["state"] == "SUCCESS" for t in tasks.values())

    wait_for(seen_by_flower, 20, "Flower to see the send_batch task succeed", interval=0.2)


def test_metrics_need_the_same_auth(worker_env, spawn, sqlite_url) -> None:
    """Flower 2.2 leaves /metrics open; digest's launcher puts it behind basic auth."""
    port = free_port()
    flower = spawn(
        "flower",
        [sys.executable, "-m", "workers.flower", "--address=127.0.0.1", f"--port={port}"],
        {**worker_env(sqlite_url), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert flower.alive(), flower.output()[-3000:]
        try:
            return call(f"{base}/healthcheck", auth=False)[0] == 200
        except OSError:
            return False

    wait_for(up, 40, "Flower to listen", interval=0.2)
    assert call(f"{base}/metrics", auth=False)[0] == 401
    status, text = call(f"{base}/metrics")
    assert status == 200 and "flower_" in text
    assert call(f"{base}/workers", auth=False)[0] == 401  # the rest as before


def test_progress_events_leave_flowers_own_fields_alone() -> None:
    """Flower's task page is Celery's event State: a progress event must not overwrite
    `sent` (shown as a time: 1970-01-01 from a count) and must show done of total."""
    from celery.events.state import State

    from workers.tasks import progress_fields

    state = State()
    sent_at = 1_795_000_000.0
    base = {"uuid": "t1", "hostname": "w@h", "clock": 1, "local_received": sent_at}
    state.event({**base, "type": "task-sent", "timestamp": sent_at, "name": "digest.send_batch"})
    state.event({**base, "type": "task-started", "timestamp": sent_at + 1, "clock": 2})
    state.event(
        {
            **base,
            "type": "task-progress",
            "timestamp": sent_at + 2,
            "clock": 3,
            **progress_fields(120, 500),
        }
    )
    task = state.tasks["t1"]
    assert task.sent == sent_at and task.state == "PROGRESS"
    assert task.result == "120 of 500 messages done"
    state.event(
        {
            **base,
            "type": "task-succeeded",
            "timestamp": sent_at + 3,
            "clock": 4,
            "result": "{'sent': 500}",
            "runtime": 2.0,
        }
    )
    assert task.state == "SUCCESS" and task.result == "{'sent': 500}"
