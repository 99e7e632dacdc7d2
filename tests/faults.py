"""Misbehaving neighbours for fault tests: an SMTP server that drips its replies a byte
at a time, and a TCP proxy that can cut a database off and let it back."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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
