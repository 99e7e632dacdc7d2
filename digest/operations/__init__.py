"""What operators use to run digest: their accounts and audit log, the overview, the dev stack.

Lives here: `operators` (console accounts, passwords, the audit log), `overview` (next
sends, editions in flight, the last day), `engagement` (clicks per edition, most read),
`devstack` (`digest dev`, the compose stack
without Docker).
May import: everything below it (the top level, `digest.store`, `digest.feeds`,
`digest.mail`, `digest.editions`, `digest.readers`); only `digest.web`, `digest.cli` and
`workers` import it.
"""
