"""A minimal SMTP server that accepts and discards everything, for benchmarks.

It speaks enough of RFC 5321 (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) for
smtplib, runs in its own process (so on the other core), and prints its port.
"""

from __future__ import annotations

import asyncio
import sys


class SinkProtocol(asyncio.Protocol):
    received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buffer = bytearray()
        self.scanned = 0  # how far the DATA terminator search has got, so it is linear
        self.in_data = False
        self.transport.write(b"220 sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies = []
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n", max(0, self.scanned - 4))
                if end < 0:
                    self.scanned = len(self.buffer)
                    break
                del self.buffer[: end + 5]
                self.in_data = False
                self.scanned = 0
                SinkProtocol.received += 1
                replies.append(b"250 2.0.0 queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                break
            verb = bytes(self.buffer[:4]).upper()
            del self.buffer[: end + 2]
            replies.append(self.reply(verb))
        if replies:
            self.transport.write(b"".join(replies))  # type: ignore[attr-defined]

    def reply(self, verb: bytes) -> bytes:
        if verb == b"EHLO":
            return b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n"
        if verb == b"DATA":
            self.in_data = True
            return b"354 end with <CRLF>.<CRLF>\r\n"
        if verb == b"QUIT":
            self.transport.close()  # type: ignore[attr-defined]
            return b"221 bye\r\n"
        return b"250 OK\r\n"


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
