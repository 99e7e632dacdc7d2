"""The Mailman project's bounce corpus (flufl.bounce 6.0.0's test data, vendored under
tests/fixtures/bounces/) through `digest inbound`'s reading and acting, each message
arriving at its reader's own VERP address, as the MTA pipe would hand it over.

Prints one line per message and a table: how many of the 100 permanent bounces
suppressed the right reader, and whether any of the 11 delay warnings or 6 messages
that are no bounce suppressed anyone (issue 16 asks for >= 95, 0 and 0).

    .venv/bin/python bench/bounces.py [--database-url URL] [--quiet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from digest import store  # noqa: E402
from digest.mail.returns import verp_address  # noqa: E402
from digest.models import Subscriber  # noqa: E402
from digest.readers import inbound  # noqa: E402
from digest.readers.returned import SoftRule  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "bounces"
SECRET = "bench-secret-key"
BOUNCES = "bounces@news.example.com"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEFT = ("bounced", "complained", "unsubscribed")


@dataclass(frozen=True)
class Result:
    file: str
    expected: str  # permanent, warning, none
    reader: str
    kind: str  # what digest read it as
    suppressed: tuple[str, ...]  # readers who left because of it
    outcome: str

    @property
    def right(self) -> bool:
        if self.expected == "permanent":
            return self.suppressed == (self.reader,)
        return not self.suppressed


def expectations() -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in (CORPUS / "expectations.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, kind, addresses = (line.split("\t") + [""])[:3]
        rows.append((name, kind, addresses.split()))
    return rows


def run_corpus(sessions: Callable[[], Session]) -> list[Result]:
    """Every corpus message through classify and apply, each in a database where its
    reader (and the other addresses it names) are active readers."""
    results = []
    for name, expected, addresses in expectations():
        raw = (CORPUS / "flufl" / name).read_bytes()
        named = [a.lower() for a in addresses] or ["reader@example.com"]
        with sessions() as session:
            readers = {a: _fresh_reader(session, a) for a in named}
            session.commit()
            reader = named[0]
            recipient = verp_address(BOUNCES, SECRET, 0, readers[reader])
            found = inbound.classify(raw, SECRET, NOW, recipient)
            outcome = inbound.apply(session, found, NOW, SoftRule())
            session.commit()
            left = session.execute(
                select(Subscriber.email).where(
                    Subscriber.id.in_(readers.values()), Subscriber.status.in_(LEFT)
                )
            )
            suppressed = tuple(sorted(e for (e,) in left))
        results.append(Result(name, expected, reader, found.kind, suppressed, outcome))
    return results


def _fresh_reader(session: Session, email: str) -> int:
    """An active reader with this address, with no suppression and nothing returned."""
    found = store.find_subscriber(session, email)
    if found is None:
        found = store.add_subscriber(session, email, NOW, status="active")
    found.status = "active"
    store.lift_suppression(session, email)
    store.forget_returned(session, found.id)
    session.flush()
    return found.id


def table(results: list[Result]) -> str:
    totals: Counter[str] = Counter(r.expected for r in results)
    right: Counter[str] = Counter(r.expected for r in results if r.right)
    lines = [f"{'expected':<10} {'messages':>8} {'right':>6}  meaning of right"]
    meaning = {
        "permanent": "the reader it bounced for, and only them, suppressed",
        "warning": "nobody suppressed (a delay warning)",
        "none": "nobody suppressed (no bounce)",
    }
    for kind in ("permanent", "warning", "none"):
        lines.append(f"{kind:<10} {totals[kind]:>8} {right[kind]:>6}  {meaning[kind]}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--quiet", action="store_true", help="only the table")
    args = parser.parse_args()
    from digest.db import make_engine, make_sessionmaker
    from digest.models import Base

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bounces.db"
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        try:
            results = run_corpus(make_sessionmaker(engine))
        finally:
            engine.dispose()
    if not args.quiet:
        for r in results:
            mark = "ok " if r.right else "BAD"
            print(f"{mark} {r.file:<20} {r.expected:<9} read as {r.kind:<8} {r.outcome[:90]}")
        print()
    print(table(results))
    permanent = sum(r.right for r in results if r.expected == "permanent")
    others_wrong = sum(not r.right for r in results if r.expected != "permanent")
    return 0 if permanent >= 95 and others_wrong == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
