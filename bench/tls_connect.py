"""Benchmark: the client CPU of opening one STARTTLS connection to a relay and sending one
message over it, with the process's one TLS context (digest.config.tls_client_context)
and with a context made anew for each connection, as every connection did before.

A send batch opens DIGEST_SMTP_CONNECTIONS (4) connections, so this is paid four times
a batch. Making a context reads the whole trust store: here the system's CA bundle plus
a self-signed certificate for the local relay (aiosmtpd with STARTTLS, in this process;
its CPU is on its own thread and not counted).

    .venv/bin/python bench/tls_connect.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiosmtpd.controller import Controller  # noqa: E402

from digest.config import _TLS_CONTEXTS, parse_smtp_url  # noqa: E402
from digest.mail.transport import SMTPTransport  # noqa: E402
from tests.faults import self_signed_certificate  # noqa: E402

SYSTEM_BUNDLE = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")
MESSAGE = b"From: news@example.com\r\nTo: reader@example.com\r\nSubject: x\r\n\r\nhello\r\n"


class Accept:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if shutil.which("openssl") is None:
        sys.exit("needs the openssl command to make the relay's certificate")
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = self_signed_certificate(Path(tmp))
        bundle = Path(tmp) / "bundle.pem"
        system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
        bundle.write_bytes(system + cert.read_bytes())
        os.environ["SSL_CERT_FILE"] = str(bundle)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(str(cert), str(key))
        relay = Controller(
            Accept(),
            hostname="127.0.0.1",
            port=free_port(),
            tls_context=server_context,
            require_starttls=True,
        )
        relay.start()
        try:
            config = parse_smtp_url(f"smtp://127.0.0.1:{relay.port}?starttls=1")
            print(f"trust store: {bundle.read_bytes().count(b'BEGIN CERTIFICATE')} certificates")
            results: dict[str, list[float]] = {"one context": [], "a context each": []}
            for _ in range(2):  # in turn, twice: the machine's speed drifts
                for mode, samples in results.items():
                    for _ in range(args.rounds):
                        if mode == "a context each":
                            _TLS_CONTEXTS.clear()
                        started = time.thread_time()
                        with SMTPTransport(config) as transport:
                            transport.send("a@example.com", "b@example.com", MESSAGE, "<1@x>")
                        samples.append(time.thread_time() - started)
        finally:
            relay.stop()
    one, each = (statistics.median(v) * 1000 for v in results.values())
    print(f"connect + STARTTLS + EHLO + one message, client CPU, median of {2 * args.rounds}:")
    print(f"  one TLS context per process:   {one:6.1f} ms")
    print(f"  a context made per connection: {each:6.1f} ms ({each / one:.0f}x)")
    print(f"  per batch of 4 connections: {4 * one:.0f} ms against {4 * each:.0f} ms")


if __name__ == "__main__":
    main()
