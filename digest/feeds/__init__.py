"""Feeds become articles: fetch a feed safely, parse and sanitise it, store each article once.

Lives here: `fetch` (HTTP with deadlines and address checks), `sanitize` (feed HTML and
titles made safe), `ingest` (RSS/Atom and JSON imports into the store).
May import: the top level (config, errors, models, db) and `digest.store`.
"""
