"""Waiting for the database before `digest init`: a closed port, a late start, a refusal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from digest.db import normalise_url, wait_for_database
from digest.errors import DatabaseUnavailable
from tests.conftest import free_port

PG_URL = os.environ.get("DIGEST_TEST_DATABASE_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="DIGEST_TEST_DATABASE_URL not set")


def test_a_closed_port_fails_after_the_deadline_with_one_clear_line() -> None:
    url = f"postgresql://digest:s3cret@127.0.0.1:{free_port()}/digest"
    heard: list[str] = []
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught:
        wait_for_database(url, 1.5, notify=heard.append)
    took = time.monotonic() - start
    message = str(caught.value)
    assert 1.5 <= took < 6, took
    assert "did not answer within 1.5 s (DIGEST_DATABASE_WAIT_SECONDS)" in message
    assert "Connection refused" in message and "\n" not in message
    assert "s3cret" not in message and "***" in message
    assert len(heard) == 1 and heard[0].startswith("waiting up to 1.5 s for the database")


def test_an_embedded_database_answers_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    wait_for_database(f"sqlite:///{tmp_path / 'new' / 'digest.db'}", 0)
    assert time.monotonic() - start < 1


def test_an_sqlite_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DatabaseUnavailable) as caught:
        wait_for_database(f"sqlite:///{tmp_path / 'file' / 'sub' / 'digest.db'}", 30)
    assert "cannot create" in str(caught.value) and "\n" not in str(caught.value)


def test_a_url_libpq_rejects_is_not_waited_for() -> None:
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught:
        wait_for_database("postgresql://digest:pw@127.0.0.1:99999/digest", 30)
    assert time.monotonic() - start < 5
    assert "refused digest" in str(caught.value) and "invalid port" in str(caught.value)


def init_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return {**base, "DIGEST_DATA_DIR": str(tmp_path), "DIGEST_SECRET_KEY": "k", **env}


def run_init(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`digest init` in its own process, as the compose stack's migrate service runs it."""
    return subprocess.run(
        [sys.executable, "-m", "digest.cli", "init"],
        env=init_env(env, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_digest_init_gives_up_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = run_init(
        {
            "DIGEST_DATABASE_HOST": "127.0.0.1",
            "DIGEST_DATABASE_PORT": str(free_port()),
            "DIGEST_DATABASE_PASSWORD": "p@ss:w/rd",
            "DIGEST_DATABASE_WAIT_SECONDS": "1",
        },
        tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("waiting up to 1 s for the database: ")
    assert lines[1].startswith("Error: database postgresql://digest:***@127.0.0.1:")
    assert "did not answer within 1 s" in lines[1] and "p@ss" not in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@contextmanager
def late_forwarder(target: tuple[str, int]) -> Iterator[tuple[int, threading.Event]]:
    """A port that refuses connections until the event is set, then relays them to target."""
    port = free_port()
    opened, stop = threading.Event(), threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side went away: this relay is over

    def relay(client: socket.socket) -> None:
        with client, socket.create_connection(target) as upstream:
            back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
            back.start()
            pipe(client, upstream)
            back.join(10)

    def serve() -> None:
        while not opened.wait(0.1):
            if stop.is_set():
                return
        with socket.create_server(("127.0.0.1", port)) as server:
            server.settimeout(0.2)
            while not stop.is_set():
                try:
                    client, _ = server.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=relay, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, opened
    finally:
        stop.set()
        thread.join(5)


@needs_pg
def test_digest_init_waits_for_a_database_that_starts_late(tmp_path: Path) -> None:
    real = make_url(normalise_url(PG_URL or ""))
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(real)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        with late_forwarder((real.host or "127.0.0.1", real.port or 5432)) as (port, opened):
            late = real.set(
                port=port, host="127.0.0.1", query={"options": f"-csearch_path={schema}"}
            )
            env = {
                "DIGEST_DATABASE_URL": late.render_as_string(hide_password=False),
                "DIGEST_DATABASE_WAIT_SECONDS": "30",
            }
            with subprocess.Popen(
                [sys.executable, "-m", "digest.cli", "init"],
                env=init_env(env, tmp_path),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ) as child:
                assert child.stderr is not None
                waiting = child.stderr.readline()  # refused: nothing listens yet
                opened.set()  # the database "starts"
                out, rest = child.communicate(timeout=60)
        assert child.returncode == 0, waiting + rest
        assert waiting.startswith("waiting up to 30 s for the database: ")
        assert "Connection refused" in waiting and rest == ""
        assert out.startswith("database ready: ")
        with admin.connect() as conn:
            assert "alembic_version" in inspect(conn).get_table_names(schema=schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@needs_pg
def test_a_missing_database_is_a_refusal_not_a_wait() -> None:
    missing = make_url(normalise_url(PG_URL or "")).set(database=f"nope_{uuid.uuid4().hex[:8]}")
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as caught:
        wait_for_database(missing.render_as_string(hide_password=False), 30)
    assert time.monotonic() - start < 5
    assert "refused digest" in str(caught.value) and "does not exist" in str(caught.value)


def test_a_worker_imports_the_database_driver_before_its_pool_forks(tmp_path: Path) -> None:
    """celeryd_init runs in the worker's main process before the prefork pool starts:
    the driver it imports there is inherited by every pool process, which would
    otherwise import psycopg on its first task (0.2 s of CPU each). A bad URL is left
    for the first connection to report."""
    script = (
        "import sys\n"
        "import workers.app as app\n"
        "assert 'psycopg' not in sys.modules, 'imported too early to tell'\n"
        "app._check_settings()\n"
        "print('psycopg' in sys.modules)\n"
        "from digest.db import preload_driver\n"
        "preload_driver('nodriver+nothing://x')\n"
    )
    env = {
        **os.environ,
        "DIGEST_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
        "DIGEST_DATA_DIR": str(tmp_path),
        "DIGEST_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"
