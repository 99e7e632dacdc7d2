"""Misbehaving neighbours for fault tests: an SMTP server that drips its replies a byte
at a time, and a TCP proxy that can cut a database off and let it back; and a
self-signed certificate for the TLS servers of tests and bench/tls_connect.py."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made by the openssl command (which the caller
    checks for), valid two days: a client that trusts it as its CA can verify it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return cert, key


def _serve(listener: socket.socket, handle: Any, stop: threading.Event) -> None:
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class DripServer:
    """Speaks SMTP promptly until the end of DATA, then answers it one byte every
    `interval` seconds with a multi-line reply that never ends."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.messages = 0
        self.thread = threading.Thread(
            target=_serve, args=(self.listener, self._handle, self.stop), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=5)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.sendall(b"220 drip ESMTP\r\n")
                reader = conn.makefile("rb")
                while not self.stop.is_set():
                    line = reader.readline()
                    if not line:
                        return
                    verb = line[:4].upper()
                    if verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        return
                    if verb != b"DATA":
                        conn.sendall(b"250 ok\r\n")
                        continue
                    conn.sendall(b"354 go ahead\r\n")
                    while reader.readline() not in (b".\r\n", b""):
                        pass
                    self.messages += 1
                    conn.sendall(b"250-")
                    while not self.stop.is_set():  # a reply that never ends
                        conn.sendall(b"x")
                        time.sleep(self.interval)
            except OSError:
                return


@contextmanager
def dripping_server(interval: float = 0.05) -> Iterator[DripServer]:
    server = DripServer(interval)
    try:
        yield server
    finally:
        server.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` drops every connection and refuses
    new ones (the database is gone), `restore()` lets them through again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=_serve, args=(self.listener, self._handle, self.stop), daemon=True
        )
        self.thread.start()

    def _handle(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self.lock:
            self.conns += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=5)
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def restore(self) -> None:
        self._open()

    def close(self) -> None:
        self.cut()


class ScriptedServer:
    """Speaks SMTP from a script: its greeting, the EHLO keywords it offers, and the reply
    to each verb (MAIL, RCPT, DATA, and the end of the data as "."). After a 421 it hangs
    up, as real servers do, without reading the rest of a pipelined group."""

    def __init__(
        self,
        greeting: str = "220 scripted ESMTP",
        keywords: tuple[str, ...] = ("PIPELINING",),
        replies: dict[str, str] | None = None,
        refuse: dict[str, str] | None = None,
    ) -> None:
        self.greeting = greeting
        self.refuse = refuse or {}  # RCPT replies by address
        self.keywords = keywords
        self.replies = replies or {}
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.accepted: list[bytes] = []  # the message bodies it said 250 to
        self.recipients: list[str] = []  # whose message each accepted body was
        self.connections = 0
        self.thread = threading.Thread(
            target=_serve, args=(self.listener, self._handle, self.stop), daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(timeout=5)

    def _say(self, conn: socket.socket, reply: str) -> bool:
        """Send a reply; False when it was a 421 and the connection is now closed."""
        conn.sendall(reply.encode() + b"\r\n")
        if reply.startswith("421"):
            conn.shutdown(socket.SHUT_RDWR)
            return False
        return True

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn:
            try:
                rcpt = ""
                if not self._say(conn, self.greeting):
                    return
                reader = conn.makefile("rb")
                refused = False  # MAIL or RCPT said no in this transaction
                while not self.stop.is_set():
                    line = reader.readline()
                    if not line:
                        return
                    verb = line[:4].upper().decode()
                    if verb == "QUIT":
                        self._say(conn, "221 bye")
                        return
                    if verb == "EHLO":
                        lines = ["scripted", *self.keywords]
                        reply = "\r\n".join(
                            f"250{'-' if i < len(lines) - 1 else ' '}{text}"
                            for i, text in enumerate(lines)
                        )
                    elif verb in ("MAIL", "RCPT"):
                        address = line.split(b"<", 1)[-1].split(b">", 1)[0].decode()
                        reply = self.replies.get(verb, "250 ok")
                        if verb == "RCPT" and address in self.refuse:
                            reply = self.refuse[address]
                        if verb == "RCPT":
                            rcpt = address
                        refused = (refused and verb == "RCPT") or not reply.startswith("250")
                    elif verb == "DATA":
                        reply = self.replies.get("DATA", "354 go ahead")
                        if refused:
                            reply = "554 5.5.1 no valid recipients"
                        if reply.startswith("354"):
                            conn.sendall(reply.encode() + b"\r\n")
                            body = b""
                            while (chunk := reader.readline()) != b".\r\n":
                                if not chunk:
                                    return  # hung up inside DATA: no message, as any server
                                body += chunk
                            reply = self.replies.get(".", "250 queued")
                            if reply.startswith("250"):
                                self.accepted.append(body)
                                self.recipients.append(rcpt)
                    else:
                        reply = "250 ok"
                        refused = False
                    if not self._say(conn, reply):
                        return
            except OSError:
                return


@contextmanager
def scripted_server(**kwargs: Any) -> Iterator[ScriptedServer]:
    server = ScriptedServer(**kwargs)
    try:
        yield server
    finally:
        server.close()
