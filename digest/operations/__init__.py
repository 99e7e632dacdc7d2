"""What operators use to run digest: their accounts and audit log, the overview, the dev stack.

Lives here: `operators` (console accounts, passwords, the audit log), `overview` (next
sends, editions in flight, the last day), `devstack` (`digest dev`, the compose stack
without Docker), `api_tokens` (the JSON API's tokens and what each scope allows),
`problems` (RFC 9457 problem details), `api_jobs` (bulk imports started through the API),
`health` (the monitoring check's pure judgement), `monitor` (the facts
it judges, from the store), `alerts` (the alert mail),
`engagement` (clicks per edition, most read).
May import: everything below it (the top level, `digest.store`, `digest.feeds`,
`digest.mail`, `digest.editions`, `digest.readers`); only `digest.web`, `digest.cli` and
`workers` import it.
"""
