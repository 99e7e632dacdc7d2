"""How any message digest sends is built and leaves, whatever it carries.

Lives here: `addresses` (address and header-text checks), `tokens` (signed link tokens,
Message-IDs), `message` (the one MIME builder), `dkim`, `senders` (From, list headers,
Reply-To), `returns` (the VERP envelope sender), `transport` (the seam: SMTP or an outbox
folder), `wire` (SMTP's hot path: a message's commands and replies once a connection is
set up), `ratelimit` (a relay's shared token bucket) and `relays` (several relays as one
transport, and `make_transport`, which chooses from the settings).
May import: the top level (config, errors, models, db) only; nothing here knows what an
edition, a reader or the store is.
"""
