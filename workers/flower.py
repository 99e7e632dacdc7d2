"""Flower as digest runs it: `python -m workers.flower [flower options]`.

Flower 2.2 serves /metrics (task names, worker names and counts) without the basic
auth that guards every other page; here /metrics asks for the same credentials, so a
Prometheus scraper uses FLOWER_BASIC_AUTH like everyone else.
"""

from __future__ import annotations

import sys
from typing import Any

import tornado.web
from flower import urls
from flower.views.monitor import Metrics


class AuthenticatedMetrics(Metrics):
    """/metrics behind Flower's own authentication (basic auth or OAuth)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        await super().get()


def guard_metrics() -> None:
    """Swap Flower's /metrics handler for the authenticated one, before its app is built."""
    urls.handlers[:] = [_guarded(h) for h in urls.handlers]


def _guarded(handler: Any) -> Any:
    # Entries are tuples (pattern, class[, kwargs]) or tornado URLSpec objects.
    if isinstance(handler, tuple) and len(handler) > 1 and handler[1] is Metrics:
        return (handler[0], AuthenticatedMetrics, *handler[2:])
    if getattr(handler, "handler_class", None) is Metrics:
        handler.handler_class = AuthenticatedMetrics
    return handler


def main(argv: list[str] | None = None) -> None:
    guard_metrics()
    from celery.bin.celery import main as celery

    sys.argv = ["celery", "--app=workers.app", "flower", *(sys.argv[1:] if argv is None else argv)]
    celery()


if __name__ == "__main__":
    main()
