"""Articles become editions, and editions become mail.

Lives here: `schedule` (when a cohort is due, pure), `selection` (which articles, pure),
`budget` and `render` (what fits, rendered and inlined once), `guard` (whether a cohort
may be planned now: every entry point asks it), `pipeline` (plan an edition and its
deliveries), `sending`, `heartbeat` and `halt` (send batches over a transport, recording
each reply, stopping when the edition is paused), `control` (pause, resume, cancel,
replan), `dispatch` (what the Celery tasks decide), `pages` and `archive` (a sent
edition as a web page with nothing personal in it), `clicks` (click links per rendering,
the scanner filter, the web process's click buffer), `ranking` (the web version ordered by
recent clicks).
May import: the top level, `digest.store`, `digest.feeds` and `digest.mail`.
"""
