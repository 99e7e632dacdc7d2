"""RFC 9457 problem details: the one shape every API error has. No Flask here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from digest.errors import DigestError

TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}
MEDIA_TYPE = "application/problem+json"


@dataclass
class Problem(DigestError):
    """An API error: its status, a one-line detail, and the fields it is about."""

    status: int
    detail: str
    errors: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def body(self, instance: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": TITLES.get(self.status, "Error"),
            "status": self.status,
            "detail": self.detail,
            "instance": instance,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


def bad_field(name: str, message: str) -> Problem:
    """400 for one bad field, named in the detail and in `errors`."""
    return Problem(400, f"{name}: {message}", [{"field": name, "message": message}])


def field_errors(errors: dict[str, str]) -> Problem:
    """400 naming each bad field."""
    detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return Problem(400, detail, [{"field": k, "message": v} for k, v in errors.items()])
