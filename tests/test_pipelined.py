"""The send path's one round trip per message: the next message's envelope goes out with
this message's body (RFC 2920), checked on the raw bytes a server receives."""

from __future__ import annotations

import quopri
import random
import socket
import threading
from datetime import timedelta
from typing import Any

import pytest

from digest.config import parse_smtp_url
from digest.errors import PermanentSendError
from digest.mail.message import DotSafe, encode_value, qp, soft_break
from digest.mail.transport import SMTPTransport
from tests.faults import scripted_server


class HoldingServer:
    """Answers the end of a message's data only once the next message's DATA has come
    in too (or the client said QUIT): a client that waits for that answer before it
    writes on stalls the server for a second, and `stalls` counts it. Keeps every byte
    it received, in order."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"smtp://127.0.0.1:{self.listener.getsockname()[1]}?deadline=10"
        self.raw = bytearray()
        self.bodies: list[bytes] = []
        self.stalls = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(1.0)
            conn.sendall(b"220 holding ESMTP\r\n")
            buffer, held, body = b"", b"", None
            while True:
                if b"\r\n" not in buffer or (body is not None and b"\r\n.\r\n" not in buffer):
                    try:
                        chunk = conn.recv(65536)
                    except TimeoutError:
                        if held:
                            self.stalls += 1
                            conn.sendall(held)
                            held = b""
                        continue
                    if not chunk:
                        return
                    self.raw += chunk
                    buffer += chunk
                    continue
                if body is not None:
                    end = buffer.index(b"\r\n.\r\n") + 2
                    self.bodies.append(buffer[:end])
                    buffer, body = buffer[end + 3 :], None
                    held += b"250 2.0.0 queued\r\n"
                    continue
                line, buffer = buffer.split(b"\r\n", 1)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-holding\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    conn.sendall(held + b"354 go on\r\n")
                    held, body = b"", b""
                elif verb == b"QUIT":
                    conn.sendall(held + b"221 bye\r\n")
                    return
                else:
                    held += b"250 2.1.0 ok\r\n"
                    if verb in (b"MAIL", b"RSET"):
                        continue  # answered with the rest of the group
                    conn.sendall(held)
                    held = b""


def test_the_next_envelope_goes_with_the_body_in_one_write() -> None:
    server = HoldingServer()
    bodies = [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(3)]
    with SMTPTransport(parse_smtp_url(server.url)) as t:
        for i, body in enumerate(bodies):
            if i + 1 < len(bodies):
                t.prepare("news@example.com", f"r{i + 1}@example.com")
            t.send("news@example.com", f"r{i}@example.com", body, f"<{i}@x>")
    server.thread.join(timeout=10)
    # Only the last message, with nothing to send ahead, waited for its answer.
    assert server.stalls == 1
    assert server.bodies == bodies
    envelope = b"MAIL FROM:<news@example.com>\r\nRCPT TO:<r%d@example.com>\r\nDATA\r\n"
    expected = b"".join(
        (envelope % i if i == 0 else b"") + body + b".\r\n" + (envelope % (i + 1) if i < 2 else b"")
        for i, body in enumerate(bodies)
    )
    assert bytes(server.raw[:5]).upper() == b"EHLO "
    assert bytes(server.raw).split(b"\r\n", 1)[1] == expected + b"QUIT\r\n"


def test_without_prepare_each_message_waits_for_its_answer() -> None:
    """The control: the same server stalls once per message when nothing goes ahead."""
    server = HoldingServer()
    with SMTPTransport(parse_smtp_url(server.url)) as t:
        for i in range(3):
            t.send("news@example.com", f"r{i}@example.com", b"Subject: 0\r\n\r\nbody\r\n", "<0@x>")
    server.thread.join(timeout=10)
    assert server.stalls == 3


def test_an_envelope_sent_ahead_to_someone_else_sends_them_nothing() -> None:
    """The lane announced one reader and then sends to another (the first unsubscribed
    meanwhile): DATA was open for the first, so the connection is dropped rather than
    closed with an empty message; the second goes on a new connection."""
    with scripted_server() as s:
        with SMTPTransport(parse_smtp_url(f"{s.url}?deadline=5")) as t:
            t.prepare("news@example.com", "gone@example.com")
            t.send("news@example.com", "a@example.com", b"Subject: a\r\n\r\nto a\r\n", "<a@x>")
            first = t._conn
            t.send("news@example.com", "b@example.com", b"Subject: b\r\n\r\nto b\r\n", "<b@x>")
            assert t._conn is not first
            t.prepare("news@example.com", "never@example.com")
            t.send("news@example.com", "c@example.com", b"Subject: c\r\n\r\nto c\r\n", "<c@x>")
        # The lane ended with DATA open for "never": hung up, nothing delivered to them.
    assert s.accepted == [
        b"Subject: a\r\n\r\nto a\r\n",
        b"Subject: b\r\n\r\nto b\r\n",
        b"Subject: c\r\n\r\nto c\r\n",
    ]


def test_a_refusal_of_the_envelope_sent_ahead_is_that_reader_s() -> None:
    """RCPT of the next reader refused while this message was accepted: this message is
    sent, the next one fails with the server's code and text, and the connection goes on."""
    with scripted_server(refuse={"nobody@example.com": "550 5.1.1 no such user"}) as s:
        with SMTPTransport(parse_smtp_url(f"{s.url}?deadline=5")) as t:
            t.prepare("news@example.com", "nobody@example.com")
            t.send("news@example.com", "a@example.com", b"Subject: a\r\n\r\nto a\r\n", "<a@x>")
            with pytest.raises(PermanentSendError) as caught:
                t.send("news@example.com", "nobody@example.com", b"x\r\n", "<n@x>")
            conn = t._conn
            t.send("news@example.com", "c@example.com", b"Subject: c\r\n\r\nto c\r\n", "<c@x>")
            assert t._conn is conn is not None
    assert caught.value.unknown_mailbox
    assert str(caught.value) == "recipient refused: 550 5.1.1 no such user"
    assert s.accepted == [b"Subject: a\r\n\r\nto a\r\n", b"Subject: c\r\n\r\nto c\r\n"]


def _decoded(encoded: bytes) -> str:
    return quopri.decodestring(encoded.replace(b"\r\n", b"\n")).decode("utf-8")


@pytest.mark.parametrize("seed", range(5))
def test_no_quoted_printable_line_starts_with_a_dot(seed: int) -> None:
    """Text full of dots, spaces and long lines: no encoded line starts with "." (so DATA
    needs no dot-stuffing), none passes 76 characters, and it decodes to the text."""
    rng = random.Random(seed)
    alphabet = "ab. .=\u00e9x\n\t" + "." * 5
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        for final in (True, False):
            encoded = qp(text, final) if final else soft_break(qp(text, final=False))
            lines = encoded.split(b"\r\n")
            assert not any(line.startswith(b".") for line in lines), text
            assert all(len(line) <= 76 for line in lines), text
            expected = text.replace("\r\n", "\n").replace("\r", "\n")
            if final and not expected.endswith("\n"):
                expected += "\n"
            assert _decoded(encoded) == expected
        value = encode_value(text.replace("\n", " "))
        assert not value.startswith(b".") and b"\n." not in value


def test_an_edition_message_is_dot_safe_and_goes_out_unstuffed(smtp_server: Any) -> None:
    """A rendered message with dots at every line start of its text: DotSafe, no line of
    it starts with a dot, and the server receives exactly those bytes."""
    from datetime import UTC, datetime

    from digest.mail.message import Envelope, Sender, build_message

    sink, url = smtp_server
    text = "\n".join(f". item {i} ..." for i in range(50))
    sender = Sender("news@example.com", "News", "news.example.com", "News", "u@example.com")
    env = Envelope("r@example.com", ".Dot", "<1@x>", "https://x/u", "tok", text, "<p>.</p>")
    message = build_message(sender, ".subject", datetime(2026, 12, 6, tzinfo=UTC), env)
    assert isinstance(message, DotSafe)
    assert b"\n." not in message
    with SMTPTransport(parse_smtp_url(url)) as t:
        t.send("news@example.com", "r@example.com", message, "<1@x>")
    assert sink.messages[0][2].replace(b"\r\n", b"\n") == message.replace(b"\r\n", b"\n")


class ChunkingServer:
    """A relay offering PIPELINING and CHUNKING (as Postfix does): keeps every byte it
    received and each message's BDAT chunk."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"smtp://127.0.0.1:{self.listener.getsockname()[1]}?deadline=10"
        self.raw = bytearray()
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn, conn.makefile("rb") as reader:
            conn.sendall(b"220 chunking ESMTP\r\n")
            while line := reader.readline():
                self.raw += line
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-chunking\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
                elif verb == b"BDAT":
                    chunk = reader.read(int(line.split()[1]))
                    self.raw += chunk
                    self.chunks.append(chunk)
                    conn.sendall(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")


def _template_and_reader(name: str = ".Dot") -> tuple[Any, Any]:
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from digest.mail.message import MessageTemplate, Reader, Sender

    sender = Sender("news@example.com", "News", "news.example.com", "News", "u@example.com")
    slots = ["name_suffix", "u"]
    html = SimpleNamespace(parts=["<p>Hi", '</p><p>.</p><a href="', '">stop</a>'], slots=slots)
    text = SimpleNamespace(parts=[". Hi", "\n.\n" * 20 + "Unsubscribe: ", "\n"], slots=slots)
    template = MessageTemplate(
        sender, ".subject", datetime(2026, 12, 6, tzinfo=UTC), "1:all", html, text
    )
    values = {"name_suffix": f" {name}", "u": ".https://x/u/tok"}
    reader = Reader("r@example.com", name, "<1@x>", "https://x/u/tok", "tok", values, values)
    return template, reader


def test_a_message_in_pieces_goes_out_whole_without_being_joined(smtp_server: Any) -> None:
    """The send path's message is its pieces (Gathered): the same bytes as the joined
    message, sent by BDAT with its exact size (CHUNKING), by DATA unstuffed otherwise."""
    from digest.mail.message import Gathered

    template, reader = _template_and_reader()
    pieces, whole = template.gathered(reader), template.render(reader)
    assert isinstance(pieces, Gathered) and isinstance(whole, DotSafe) and len(pieces) > 10
    assert b"".join(pieces) == whole and pieces.size == len(whole)
    assert b"\n." not in whole and not whole.startswith(b".")

    server = ChunkingServer()
    with SMTPTransport(parse_smtp_url(server.url)) as t:
        t.begin("news@example.com", "r@example.com", pieces)
        t.end()
        assert t._chunking
    server.thread.join(5)
    assert server.chunks == [whole]
    assert b"RCPT TO:<r@example.com>\r\nBDAT %d LAST\r\n" % len(whole) + whole in server.raw

    sink, url = smtp_server  # aiosmtpd: no CHUNKING, so DATA
    with SMTPTransport(parse_smtp_url(url)) as t:
        t.send("news@example.com", "r@example.com", pieces, "<1@x>")
    assert sink.messages[0][2].replace(b"\r\n", b"\n") == whole.replace(b"\r\n", b"\n")


def test_replies_are_read_in_bulk_whatever_their_shape() -> None:
    """One-line replies in one segment, a multi-line one, a bare code, a reply split over
    two segments, and a hang-up that keeps the replies that came before it."""
    import time

    from digest.mail.wire import Closed, Wire

    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire = Wire(ours, read_timeout=5)
        wire.deadline = time.monotonic() + 5
        theirs.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go on\r\n250 left over\r\n")
        assert wire.replies(3) == [(250, b"2.1.0 Ok"), (250, b"2.1.5 Ok"), (354, b"go on")]
        theirs.sendall(b"250-first\r\n250-second\r\n250 last\r\n250\r\n")
        assert wire.replies(3) == [(250, b"left over"), (250, b"first\nsecond\nlast"), (250, b"")]
        theirs.sendall(b"452 4.3.1 out")
        threading.Timer(0.2, theirs.sendall, args=(b" of space\r\n",)).start()
        assert wire.replies(1) == [(452, b"4.3.1 out of space")]
        theirs.sendall(b"250 ok\r\n421 4.7.0 closing\r\n")
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(Closed) as caught:
            wire.replies(3)
        assert caught.value.replies == [(250, b"ok"), (421, b"4.7.0 closing")]


def test_one_thread_over_three_pipelined_connections_sends_each_reader_once(
    session: Any, settings: Any
) -> None:
    """A batch over three connections that one thread takes in turn, each message's
    envelope sent ahead with the last body on its connection: a refused address fails
    and bounces, a reader who left before the send is suppressed (their envelope never
    goes ahead), every other reader gets exactly one message, and no connection is
    dropped for it."""
    from collections import Counter

    from digest import store
    from digest.editions import pipeline, sending
    from digest.models import Subscriber
    from tests.conftest import add_articles
    from tests.test_pipeline import AFTER, CUT, MORNING, add_reader

    add_articles(session, CUT - timedelta(hours=1), [("Story", "news")])
    readers = [add_reader(session, f"r{i}@example.com") for i in range(60)]
    session.commit()
    with scripted_server(refuse={"r7@example.com": "550 5.1.1 no such user"}) as s:
        smtp = settings.with_(smtp=parse_smtp_url(s.url), smtp_connections=3)
        plan = pipeline.plan_edition(session, smtp, MORNING, AFTER)
        session.get(Subscriber, readers[20].id).status = "unsubscribed"
        session.commit()
        report = sending.send_batch(
            session,
            smtp,
            SMTPTransport(smtp.smtp),
            store.delivery_ids(session, plan.edition_id),
            AFTER,
        )
    assert (report.sent, report.failed, report.suppressed) == (58, 1, 1)
    assert Counter(s.recipients) == Counter(
        f"r{i}@example.com" for i in range(60) if i not in (7, 20)
    )
    assert all(body for body in s.accepted)  # no empty message to anyone
    assert s.connections == 3
    session.expire_all()
    assert session.get(Subscriber, readers[7].id).status == "bounced"
    counts = store.edition_counts(session, plan.edition_id)
    assert counts == {"sent": 58, "failed": 1, "suppressed": 1}


def test_a_reply_that_came_in_time_counts_when_its_turn_comes_late() -> None:
    """Past the deadline (the thread was busy on another connection), a reply already
    there is read; with nothing there it is DeadlineExceeded at once, not a wait."""
    import time

    from digest.mail.wire import DeadlineExceeded, Wire

    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire = Wire(ours, read_timeout=5)
        wire.deadline = time.monotonic() + 0.05
        theirs.sendall(b"250 2.0.0 queued\r\n")
        time.sleep(0.1)  # the deadline passes with the reply waiting in the socket
        assert wire.replies(1) == [(250, b"2.0.0 queued")]
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            wire.replies(1)
        assert time.monotonic() - started < 1
        wire.deadline = time.monotonic() + 5  # the next message waits as it should
        threading.Timer(0.2, theirs.sendall, args=(b"250 ok\r\n",)).start()
        assert wire.replies(1) == [(250, b"ok")]


def test_a_plain_socket_waits_only_when_it_would_block() -> None:
    """The wire's plain socket is non-blocking: a write larger than the socket takes
    at once waits (in poll) while the peer drains it, and arrives whole; a peer that
    stops reading ends the write by the deadline; a silent one a read by read_timeout."""
    import time

    from digest.mail.wire import DeadlineExceeded, Wire

    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire = Wire(ours, read_timeout=0.3)
        assert ours.getblocking() is False
        wire.deadline = time.monotonic() + 10
        body = bytes(range(256)) * 8192  # 2 MB: far more than a socket buffers
        got = bytearray()

        def drain() -> None:
            while len(got) < len(body):
                time.sleep(0.001)
                got.extend(theirs.recv(65536))

        reader = threading.Thread(target=drain)
        reader.start()
        wire.write_all([b"BDAT %d LAST\r\n" % len(body), body[:1000], body[1000:]])
        reader.join(10)
        assert bytes(got) == b"BDAT %d LAST\r\n" % len(body) + body

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            wire.replies(1)  # nothing comes: read_timeout, not the 10 s deadline
        assert 0.25 < time.monotonic() - started < 2

        wire.read_timeout, wire.deadline = 5, time.monotonic() + 0.5
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            wire.write_all([body])  # nobody reads: the deadline ends the write
        assert 0.4 < time.monotonic() - started < 3
