"""DKIM signing (RFC 6376) for operators whose relay does not sign: RSA-SHA256,
relaxed/relaxed, with dkimpy.

Headers absent from a message are still listed in h=, which signs their absence; the
headers a reader trusts are listed once more than they occur (over-signing): a relay or
a forwarder cannot add a second From, Subject or List-Unsubscribe, or a Reply-To,
unnoticed.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import dkim
from dkim.crypto import parse_pem_private_key

from digest.errors import ConfigError

SIGNED_HEADERS = (
    "From",
    "Reply-To",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
)
# Listed a second time: a copy added above the signed one breaks the signature.
OVERSIGNED = (
    "From",
    "Subject",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Reply-To",
    "Date",
    "Message-ID",
)


@dataclass(frozen=True)
class DKIMKey:
    """A selector, its signing domain and the PEM private key (never shown in repr)."""

    selector: str
    domain: str
    private_key: bytes = field(repr=False)


def load_key(selector: str, domain: str, key_file: Path) -> DKIMKey:
    """Read and check a PEM key file; ConfigError naming the problem otherwise."""
    try:
        pem = key_file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read DIGEST_DKIM_KEY_FILE {key_file}: {exc.strerror}") from None
    key = DKIMKey(selector, domain, pem)
    try:
        dkim_header(key, b"From: a@b\r\n\r\n")
    except dkim.DKIMException as exc:
        raise ConfigError(f"DIGEST_DKIM_KEY_FILE {key_file} is not a usable key: {exc}") from None
    return key


def dkim_header(key: DKIMKey, message: bytes) -> bytes:
    """The DKIM-Signature header line(s) to put in front of `message`."""
    return bytes(
        dkim.sign(
            message,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode("ascii") for h in SIGNED_HEADERS + OVERSIGNED],
        )
    )


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _der_int(n: int) -> bytes:
    return _der(0x02, n.to_bytes(n.bit_length() // 8 + 1, "big"))


RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d0101010500")  # OID 1.2.840.113549.1.1.1, NULL


def public_record(key: DKIMKey) -> str:
    """The TXT record to publish at <selector>._domainkey.<domain>."""
    private = parse_pem_private_key(key.private_key)
    rsa = _der(0x30, _der_int(private["modulus"]) + _der_int(private["publicExponent"]))
    spki = _der(0x30, _der(0x30, RSA_ENCRYPTION) + _der(0x03, b"\x00" + rsa))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode('ascii')}"
