"""`digest send`'s own pieces: progress display and the exit code of an edition."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.cli.send import EXIT_DONE, EXIT_FAILED, EXIT_UNFINISHED, ProgressShown, edition_outcome


def test_progress_is_a_line_every_few_seconds_off_a_terminal() -> None:
    clock = [0.0]
    lines: list[str] = []
    progress = ProgressShown(every=5, tty=False, clock=lambda: clock[0], echo=lines.append)
    for second, done in [(1, 10), (4.9, 40), (5, 50), (6, 60), (10.5, 90), (11, 100)]:
        clock[0] = second
        progress(done, 100)
    assert lines == ["  50 of 100 deliveries done", "  90 of 100 deliveries done"]


@pytest.mark.parametrize(
    ("counts", "code"),
    [
        ({"sent": 5}, EXIT_DONE),
        ({"sent": 4, "suppressed": 1}, EXIT_DONE),
        ({}, EXIT_DONE),
        ({"sent": 4, "failed": 1}, EXIT_FAILED),
        ({"sent": 4, "deferred": 1}, EXIT_UNFINISHED),
        ({"sent": 4, "queued": 1, "failed": 1}, EXIT_UNFINISHED),
        ({"sending": 2}, EXIT_UNFINISHED),
    ],
)
def test_exit_code_of_an_edition(counts: dict[str, int], code: int) -> None:
    assert edition_outcome(7, counts, datetime(2026, 11, 29, tzinfo=UTC)) == code
