"""Articles become editions, and editions become mail.

Lives here: `schedule` (when a cohort is due, pure), `selection` (which articles, pure),
`budget` and `render` (what fits, rendered and inlined once), `pipeline` (plan an edition
and its deliveries), `sending` and `heartbeat` (send batches over a transport, recording
each reply), `dispatch` (what the Celery tasks decide), `pages` and `archive` (a sent
edition as a web page with nothing personal in it), `clicks` (click links per rendering,
the scanner filter, the web process's click buffer).
May import: the top level, `digest.store`, `digest.feeds` and `digest.mail`.
"""
