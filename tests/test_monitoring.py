"""The loud signal, for real: heartbeats of real beat and worker processes, the
monitoring check's exit code and summary as they stop, /metrics scraped and parsed,
the console's banner and the alert mail."""

from __future__ import annotations

import signal
import sys
from typing import Any

from click.testing import CliRunner

from digest.cli import cli
from tests.conftest import wait_for

QUICK = {
    "DIGEST_BEAT_STALE_SECONDS": "3",
    "DIGEST_WORKER_STALE_SECONDS": "3",
    "DIGEST_SWEEP_EVERY_SECONDS": "1",
    "DIGEST_DISPATCH_EVERY_SECONDS": "3600",
    "DIGEST_INGEST_EVERY_SECONDS": "3600",
}


def check(env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["status", "--check"], env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def until(env: dict[str, str], code: int, words: str, timeout: float) -> str:
    """The check's output once it exits `code` with `words` on its summary line."""

    def looks() -> str | None:
        got, output = check(env)
        return output if got == code and words in output.splitlines()[0] else None

    try:
        return str(wait_for(looks, timeout, f"exit {code} with {words!r}", interval=0.5))
    except AssertionError:
        raise AssertionError(f"{check(env)}") from None


def start_beat(spawn: Any, env: dict[str, str]) -> Any:
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel=INFO"]
    return spawn("beat", argv, env)


def test_the_check_goes_critical_when_the_worker_and_then_beat_stop(
    sqlite_url, worker_env, start_worker, spawn
) -> None:
    env = worker_env(sqlite_url, **QUICK)
    code, output = check(env)
    assert code == 2 and output.startswith("DIGEST CRITICAL - beat has never run")

    beat = start_beat(spawn, env)
    worker = start_worker(env, concurrency=1)
    ok = until(env, 0, "DIGEST OK", timeout=20)
    assert "beat: seen" in ok and "alive, last seen" in ok

    # A worker killed outright leaves no word: its heartbeat just gets old, while
    # beat's sweep ticks pile up in the queue.
    worker.signal(signal.SIGKILL)
    worker.proc.wait(timeout=10)
    down = until(env, 2, "no worker alive", timeout=3 + 10)
    summary = down.splitlines()[0]
    assert summary.startswith("DIGEST CRITICAL - no worker alive, ")
    assert "tasks waiting (last worker last seen" in summary
    assert "what to do: start a worker" in down

    # Beat killed too: stale after DIGEST_BEAT_STALE_SECONDS.
    beat.signal(signal.SIGKILL)
    beat.proc.wait(timeout=10)
    down = until(env, 2, "beat last seen", timeout=3 + 10)
    assert down.splitlines()[0].startswith("DIGEST CRITICAL - beat last seen ")


def test_a_clean_stop_is_reported_at_once(sqlite_url, worker_env, start_worker, spawn) -> None:
    env = worker_env(sqlite_url, **{**QUICK, "DIGEST_BEAT_STALE_SECONDS": "600"})
    beat = start_beat(spawn, env)
    start_worker(env, concurrency=1)
    until(env, 0, "DIGEST OK", timeout=20)
    beat.stop()  # SIGTERM: beat says it stopped, though its staleness is 10 minutes
    code, output = check(env)
    assert code == 2, output
    assert "beat stopped " in output.splitlines()[0]
