"""gunicorn settings for the web app, shared by the image, compose and the tests:

gunicorn --config python:digest.gunicorn_conf 'digest.web:create_app()'
"""

import os
from typing import Any

from gunicorn.glogging import Logger

from digest.web import redact_path

bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_WORKERS", "2"))
accesslog = "-"


class RedactingLogger(Logger):
    """The access log without subscriber tokens: paths such as /unsubscribe/<token>
    are links to act for a reader, and logs are read by more people than should."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):  # request line, path, query, referer
            if isinstance(atoms.get(key), str):
                atoms[key] = redact_path(atoms[key])
        return atoms


logger_class = RedactingLogger


def when_ready(server: Any) -> None:
    """Say so when the sign-up limits would be counted per worker, not per site."""
    if workers > 1 and not os.environ.get("DIGEST_REDIS_URL"):
        server.log.warning(
            "DIGEST_REDIS_URL is not set: with %d workers the sign-up limits, the sign-in "
            "limits and single-use form tokens are counted in each worker separately "
            "(%d times as lenient); set it to share them",
            workers,
            workers,
        )
