"""The operator console's pages (/admin), one module per page family: overview,
editions (with sending a slot now and test copies), readers (list, export;
bulk_actions.py; imports.py: CSV import), content (feeds and
articles), returned mail, API tokens, the audit log, the health banner on every
page; common.py holds what they share.

Views are thin: they call digest/ functions, write the action to the audit log in the
same transaction, and redirect (POST) or render templates/admin/ (GET). Sends started
here are handed to Celery when a broker is configured, else run on a background thread
of this process, so the page answers at once and shows the progress live.
"""

from digest.web.console import (
    api_tokens,
    audit_log,
    bulk_actions,
    content,
    editions,
    health_banner,
    imports,
    overview,
    readers,
    returned_mail,
)

__all__ = [
    "api_tokens",
    "audit_log",
    "bulk_actions",
    "content",
    "editions",
    "health_banner",
    "imports",
    "overview",
    "readers",
    "returned_mail",
]
