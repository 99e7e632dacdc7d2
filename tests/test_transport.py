"""SMTP against a real aiosmtpd server, and the outbox folder."""

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from digest.config import parse_smtp_url, tls_client_context
from digest.errors import ConfigError, PermanentSendError, TransientSendError
from digest.mail.transport import OutboxTransport, SMTPTransport
from tests.faults import dripping_server, self_signed_certificate

MSG = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


def test_one_connection_for_a_batch(smtp_server) -> None:
    sink, url = smtp_server
    with SMTPTransport(parse_smtp_url(url)) as t:
        for i in range(5):
            t.send("a@example.com", f"r{i}@example.com", MSG, f"<{i}@x>")
        conn = t._conn
    assert conn is not None
    assert [m[1] for m in sink.messages] == [[f"r{i}@example.com"] for i in range(5)]


def test_4xx_is_transient_and_5xx_permanent(smtp_server) -> None:
    sink, url = smtp_server
    sink.refuse["busy@example.com"] = "451 4.3.0 try again later"
    sink.refuse["gone@example.com"] = "550 5.1.1 user unknown"
    sink.refuse["policy@example.com"] = "554 5.7.1 rejected by policy"
    with SMTPTransport(parse_smtp_url(url)) as t:
        with pytest.raises(TransientSendError) as busy:
            t.send("a@example.com", "busy@example.com", MSG, "<1@x>")
        with pytest.raises(PermanentSendError) as gone:
            t.send("a@example.com", "gone@example.com", MSG, "<2@x>")
        with pytest.raises(PermanentSendError) as policy:
            t.send("a@example.com", "policy@example.com", MSG, "<3@x>")
        t.send("a@example.com", "ok@example.com", MSG, "<4@x>")  # connection still usable
    assert busy.value.code == 451
    assert gone.value.unknown_mailbox and gone.value.code == 550
    assert not policy.value.unknown_mailbox
    assert [m[1] for m in sink.messages] == [["ok@example.com"]]


def test_dropped_connection_is_transient_then_reconnects(smtp_server) -> None:
    sink, url = smtp_server
    sink.drop_after = 1
    with SMTPTransport(parse_smtp_url(url)) as t:
        t.send("a@example.com", "one@example.com", MSG, "<1@x>")
        with pytest.raises(TransientSendError):
            t.send("a@example.com", "two@example.com", MSG, "<2@x>")
        sink.drop_after = None
        t.send("a@example.com", "two@example.com", MSG, "<2@x>")
    assert [m[1] for m in sink.messages] == [["one@example.com"], ["two@example.com"]]


def test_unreachable_server_is_transient() -> None:
    with SMTPTransport(parse_smtp_url("smtp://127.0.0.1:1?timeout=2")) as t:
        with pytest.raises(TransientSendError, match="cannot connect"):
            t.send("a@example.com", "b@example.com", MSG, "<1@x>")


def test_outbox_writes_one_file_per_message_id(tmp_path: Path) -> None:
    with OutboxTransport(tmp_path / "out") as t:
        t.send("a@example.com", "b@example.com", MSG, "<digest.1.2.x@example.com>")
        t.send("a@example.com", "b@example.com", MSG, "<digest.1.2.x@example.com>")
        t.send("a@example.com", "c@example.com", MSG, "<../../etc/passwd>")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["digest.1.2.x_example.com.eml", "_.._etc_passwd.eml"] or len(files) == 2
    assert all(p.parent == tmp_path / "out" for p in (tmp_path / "out").iterdir())
    assert (tmp_path / "out" / "digest.1.2.x_example.com.eml").read_bytes() == MSG


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "user", "password"),
    [
        ("smtp://mail.example.com", "mail.example.com", 25, "none", None, None),
        (
            "smtp://u:p%40ss@mail.example.com:587?starttls=1",
            "mail.example.com",
            587,
            "starttls",
            "u",
            "p@ss",
        ),
        ("smtps://mail.example.com", "mail.example.com", 465, "implicit", None, None),
    ],
)
def test_parse_smtp_url(url, host, port, tls, user, password) -> None:
    config = parse_smtp_url(url)
    assert (config.host, config.port, config.tls, config.username, config.password) == (
        host,
        port,
        tls,
        user,
        password,
    )
    assert "p@ss" not in repr(config)


def test_bad_smtp_url() -> None:
    with pytest.raises(ConfigError, match="smtp://"):
        parse_smtp_url("http://mail.example.com")


def test_sender_refusal_is_never_blamed_on_the_reader(smtp_server) -> None:
    sink, url = smtp_server
    sink.refuse_sender = "550 5.1.0 <a@example.com>: Sender address rejected: User unknown"
    with SMTPTransport(parse_smtp_url(url)) as t:
        with pytest.raises(TransientSendError, match="sender refused"):
            t.send("a@example.com", "reader@example.com", MSG, "<1@x>")
        sink.refuse_sender = None
        t.send("a@example.com", "reader@example.com", MSG, "<1@x>")
    assert len(sink.messages) == 1


def test_421_drops_the_connection(smtp_server) -> None:
    sink, url = smtp_server
    sink.refuse["busy@example.com"] = "421 4.3.2 shutting down"
    with SMTPTransport(parse_smtp_url(url)) as t:
        with pytest.raises(TransientSendError):
            t.send("a@example.com", "busy@example.com", MSG, "<1@x>")
        assert t._conn is None  # the next message opens a fresh connection
        t.send("a@example.com", "ok@example.com", MSG, "<2@x>")
    assert [m[1] for m in sink.messages] == [["ok@example.com"]]


@pytest.mark.parametrize(
    ("code", "reply", "unknown"),
    [
        (550, b"5.1.1 <a@example.com>: Recipient address rejected: User unknown", True),
        (550, b"5.1.2 Host unknown", True),
        (550, b"5.1.10 Recipient domain has null MX", True),
        (550, b"User unknown in local recipient table", True),
        (550, b"5.7.1 Service unavailable, Client host [185.5.1.20] blocked using Spamhaus", False),
        (550, b"Requested action not taken: mailbox unavailable", False),
        (554, b"5.1.1 user unknown", False),
        (550, b"5.2.2 mailbox full", False),
    ],
)
def test_only_a_missing_mailbox_counts_as_unknown(code: int, reply: bytes, unknown: bool) -> None:
    from digest.mail.transport import unknown_mailbox

    assert unknown_mailbox(code, reply) is unknown


def _within(seconds: float, fn: Any) -> Any:
    """Run fn in a thread; fail (instead of hanging) if it takes longer than `seconds`."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the test below
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_a_dripping_server_cannot_hold_a_message_past_its_deadline() -> None:
    """One byte every 50 ms never trips the per-read timeout; the total deadline does."""
    with dripping_server(0.05) as drip:
        config = parse_smtp_url(f"{drip.url}?timeout=5&deadline=1")
        started = time.monotonic()
        with SMTPTransport(config) as t:
            with pytest.raises(TransientSendError, match="deadline"):
                _within(6, lambda: t.send("a@example.com", "b@example.com", MSG, "<1@x>"))
            assert t._conn is None  # never reused: the reply is still dripping
        assert time.monotonic() - started < 3
        assert drip.messages == 1


def test_outbox_full_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutboxTransport(out) as t:
        # The kernel's always-full device stands in for a full disk: writes get ENOSPC.
        t.path_for("<m1@x>").with_suffix(".tmp").symlink_to("/dev/full")
        with pytest.raises(TransientSendError, match="No space left"):
            t.send("a@example.com", "b@example.com", MSG, "<m1@x>")
        assert list(out.iterdir()) == []
        t.send("a@example.com", "b@example.com", MSG, "<m1@x>")  # space again: it goes
    assert [p.name for p in out.iterdir()] == ["m1_x.eml"]


def test_outbox_that_cannot_be_created_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError) as caught:
        with OutboxTransport(tmp_path / "file" / "out"):
            pass
    assert str(caught.value) == (
        f"outbox folder {tmp_path / 'file' / 'out'} cannot be created (DIGEST_OUTBOX_DIR): "
        "Not a directory"
    )


def test_an_outbox_that_turns_read_only_stops_the_send_untried(tmp_path: Path) -> None:
    """The folder becomes read-only mid-batch: the cleanup of the unwritten file cannot
    fail the send with an OSError of its own; the folder is reported, not the reader."""
    from digest.errors import OutboxUnwritable
    from tests.test_workers import read_only_folder

    out = tmp_path / "out"
    with OutboxTransport(out) as t:
        out.rmdir()
        with read_only_folder(out):
            with pytest.raises(OutboxUnwritable, match="cannot be written"):
                t.send("a@example.com", "b@example.com", MSG, "<m1@x>")


# --- reply codes kept on every transient error (issue 15, part 4) ------------------------


def test_a_421_to_rcpt_after_pipelining_keeps_its_code_and_text() -> None:
    """The server answers RCPT with 421 and hangs up before it answers DATA: the error is
    its 421 and its words, not "connection lost"; the next message reconnects."""
    from tests.faults import scripted_server

    with scripted_server(replies={"RCPT": "421 4.7.0 too many connections, slow down"}) as s:
        with SMTPTransport(parse_smtp_url(f"{s.url}?deadline=5")) as t:
            with pytest.raises(TransientSendError) as caught:
                t.send("a@example.com", "b@example.com", MSG, "<1@x>")
            assert t._conn is None
        s.replies.clear()
        with SMTPTransport(parse_smtp_url(s.url)) as t:
            t.send("a@example.com", "b@example.com", MSG, "<2@x>")
    assert caught.value.code == 421
    assert str(caught.value) == "recipient refused: 421 4.7.0 too many connections, slow down"
    assert len(s.accepted) == 1


@pytest.mark.parametrize("keywords", [("PIPELINING",), ()])
def test_a_421_greeting_keeps_its_code_and_text(keywords: tuple[str, ...]) -> None:
    from tests.faults import scripted_server

    with scripted_server(greeting="421 4.3.2 busy, try later", keywords=keywords) as s:
        with SMTPTransport(parse_smtp_url(f"{s.url}?deadline=5")) as t:
            with pytest.raises(TransientSendError) as caught:
                t.send("a@example.com", "b@example.com", MSG, "<1@x>")
    assert caught.value.code == 421
    assert str(caught.value).endswith(": 421 4.3.2 busy, try later")


@pytest.mark.parametrize("keywords", [("PIPELINING",), ()])
@pytest.mark.parametrize(
    ("step", "reply", "kind", "words"),
    [
        ("MAIL", "451 4.3.0 sender check failed", TransientSendError, "sender refused"),
        ("RCPT", "550 5.1.1 no such user", PermanentSendError, "recipient refused"),
        ("DATA", "452 4.3.1 out of space", TransientSendError, "DATA refused"),
        (".", "554 5.6.0 message refused", PermanentSendError, "message refused"),
    ],
)
def test_every_refusal_keeps_its_code_and_the_connection_goes_on(
    keywords: tuple[str, ...], step: str, reply: str, kind: type, words: str
) -> None:
    """With and without PIPELINING: the refusing step, its code and text; the connection
    is reset and carries the next message."""
    from tests.faults import scripted_server

    with scripted_server(keywords=keywords, replies={step: reply}) as s:
        with SMTPTransport(parse_smtp_url(f"{s.url}?deadline=5")) as t:
            with pytest.raises(kind) as caught:
                t.send("a@example.com", "b@example.com", MSG, "<1@x>")
            conn = t._conn
            s.replies.clear()
            t.send("a@example.com", "b@example.com", b".dot\r\n..two\r\nend", "<2@x>")
            assert t._conn is conn is not None
    assert caught.value.code == int(reply[:3])
    assert str(caught.value) == f"{words}: {reply}"
    assert s.accepted == [b"..dot\r\n...two\r\nend\r\n"]  # dot-stuffed on the wire


# --- the lean send path against real servers: TLS, AUTH, Postfix -----------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the test trusts it as its CA)."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def _tls_server(certificate: tuple[Path, Path], implicit: bool) -> Any:
    import ssl

    from aiosmtpd.smtp import AuthResult

    from tests.conftest import Sink, _Controller, free_port

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        ok = auth_data.login == b"digest" and auth_data.password == b"s3cret"
        return AuthResult(success=ok)

    sink = Sink()
    options: dict[str, Any] = {"authenticator": authenticator, "auth_require_tls": True}
    if implicit:
        # aiosmtpd offers AUTH over implicit TLS only when told it need not ask for TLS.
        options |= {"ssl_context": context, "auth_require_tls": False}
    else:
        options |= {"tls_context": context, "require_starttls": True}
    controller = _Controller(sink, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    return sink, controller


@pytest.mark.parametrize(("scheme", "query"), [("smtp", "?starttls=1"), ("smtps", "")])
def test_tls_and_auth_with_the_lean_path(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, scheme: str, query: str
) -> None:
    """STARTTLS and implicit TLS, login, several messages over one connection."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    sink, controller = _tls_server(certificate, implicit=scheme == "smtps")
    try:
        base = f"{scheme}://digest:s3cret@127.0.0.1:{controller.port}{query}"
        with SMTPTransport(parse_smtp_url(base)) as t:
            for i in range(3):
                t.send("a@example.com", f"r{i}@example.com", MSG, f"<{i}@x>")
            assert t._conn is not None and t._conn.sock is not None
            assert t._conn.sock.version() is not None  # type: ignore[attr-defined]
            # The process's one SMTP context (with this trust store), not one made anew
            # for each connection (36 ms of CPU: it reads the whole CA bundle).
            assert t._conn.sock.context is tls_client_context("smtp")  # type: ignore[attr-defined]
    finally:
        controller.stop()
    assert [m[1] for m in sink.messages] == [[f"r{i}@example.com"] for i in range(3)]


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_postfix_smtp_sink_takes_pipelined_messages() -> None:
    """Postfix's own smtp-sink (PIPELINING, no CHUNKING): many messages over one
    connection, each in two writes, the replies read in bulk."""
    import os
    import subprocess

    from tests.conftest import free_port, wait_for

    sink_program = Path("/usr/sbin/smtp-sink")
    if not sink_program.exists():
        pytest.skip("Postfix's smtp-sink is not installed (apt-get install postfix)")
    port = free_port()
    argv = [str(sink_program), *(["-u", "nobody"] if os.geteuid() == 0 else [])]
    proc = subprocess.Popen([*argv, f"127.0.0.1:{port}", "16"])
    try:
        wait_for(lambda: _listening(port), 10, "smtp-sink")
        with SMTPTransport(parse_smtp_url(f"smtp://127.0.0.1:{port}")) as t:
            for i in range(200):
                t.send("a@example.com", f"r{i}@example.com", MSG * 50, f"<{i}@x>")
            assert t._pipelining and not t._chunking
            assert t._wire is not None and t._wire._buffer == b""  # every reply consumed
    finally:
        proc.terminate()
        proc.wait()


def test_postfix_takes_bdat_and_refuses_with_its_code() -> None:
    """The local Postfix (CHUNKING and PIPELINING): MAIL, RCPT, BDAT and the body in one
    write; a recipient it refuses keeps its code, the chunk is consumed, and the same
    connection carries the next message."""
    if not _listening(25):
        pytest.skip("no Postfix listening on 127.0.0.1:25")
    with SMTPTransport(parse_smtp_url("smtp://127.0.0.1:25?deadline=10")) as t:
        with pytest.raises(PermanentSendError) as caught:
            t.send("a@example.com", "bad@[300.1.1.1]", MSG, "<1@x>")
        if not t._chunking:
            pytest.skip("this Postfix does not offer CHUNKING")
        conn = t._conn
        t.send("digest-test@localhost", "postmaster@localhost", MSG, "<2@x>")
        assert t._conn is conn is not None
    assert caught.value.code == 501
    assert "recipient refused: 501" in str(caught.value)


@pytest.mark.parametrize(("scheme", "query"), [("smtp", "?starttls=1"), ("smtps", "")])
def test_envelopes_go_ahead_over_tls_too(
    certificate: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, scheme: str, query: str
) -> None:
    """STARTTLS and implicit TLS with PIPELINING (aiosmtpd): no gather write there, the
    pieces are joined; the envelope sent ahead is used, and every message arrives whole."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    sink, controller = _tls_server(certificate, implicit=scheme == "smtps")
    sink.pipelining = True
    bodies = [b"Subject: %d\r\n\r\n.dot first\r\nbody %d\r\n" % (i, i) for i in range(4)]
    try:
        base = f"{scheme}://digest:s3cret@127.0.0.1:{controller.port}{query}"
        with SMTPTransport(parse_smtp_url(base)) as t:
            for i, body in enumerate(bodies):
                if i + 1 < len(bodies):
                    t.prepare("a@example.com", f"r{i + 1}@example.com")
                t.begin("a@example.com", f"r{i}@example.com", body)
                t.end()
                if i:
                    assert t._pipelining and t._wire is not None and not t._wire._plain
            conn = t._conn
        assert conn is not None
    finally:
        controller.stop()
    assert [m[1] for m in sink.messages] == [[f"r{i}@example.com"] for i in range(4)]
    assert [m[2] for m in sink.messages] == bodies  # dot-stuffed on the wire, unstuffed there


# --- connections kept for the next batch ------------------------------------------------


def _batch(config: Any, lanes: int, first: int) -> None:
    """One batch as the send loop runs it: a transport per lane, two messages each."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        transports = [stack.enter_context(SMTPTransport(config, reuse=True)) for _ in range(lanes)]
        for i in range(2):
            for lane, transport in enumerate(transports):
                n = first + 2 * lane + i
                transport.send("a@example.com", f"r{n}@example.com", MSG, f"<{n}@x>")


def test_a_batch_leaves_its_connections_to_the_next(smtp_server) -> None:
    """Three batches of two lanes in one process: two connections in all (no connect,
    greeting and EHLO, with TLS no handshake and login, for the next batches)."""
    sink, url = smtp_server
    config = parse_smtp_url(url)
    for batch in range(3):
        _batch(config, 2, 4 * batch)
    assert sorted(m[1][0] for m in sink.messages) == sorted(f"r{n}@example.com" for n in range(12))
    assert len(sink.peers) == 2
    # Without reuse (a transport made by hand, the tests', the CLI's checks) each batch
    # connects afresh and says QUIT.
    with SMTPTransport(config) as plain:
        plain.send("a@example.com", "x@example.com", MSG, "<x@x>")
    assert len(sink.peers) == 3


def test_a_parked_connection_the_server_closed_is_not_used() -> None:
    """A relay that hangs up idle connections (aiosmtpd after 0.3 s, with a 421): the
    next batch sees it and connects afresh; no message is deferred."""
    from tests.conftest import Sink, _Controller, free_port

    sink = Sink()
    controller = _Controller(sink, hostname="127.0.0.1", port=free_port(), timeout=0.3)
    controller.start()
    try:
        config = parse_smtp_url(f"smtp://127.0.0.1:{controller.port}")
        _batch(config, 1, 0)
        time.sleep(0.8)  # the server has said 421 and closed it
        _batch(config, 1, 2)  # raises if a message could not go
        assert len(sink.messages) == 4 and len(sink.peers) == 2
    finally:
        controller.stop()


def test_a_forked_process_does_not_take_its_parents_connections(smtp_server) -> None:
    """A Celery pool process forked after its parent sent: the parent's parked sockets
    are not the child's to write on (both would talk on one connection)."""
    import os

    from digest.mail.parked import PARKED

    sink, url = smtp_server
    config = parse_smtp_url(url)
    _batch(config, 1, 0)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's verdict is its exit status
        os._exit(0 if PARKED.take((config, None)) is None else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    _batch(config, 1, 2)  # the parent's own connection is still there, and still works
    assert len(sink.messages) == 4 and len(sink.peers) == 1
