"""The people on the list, and the mail that comes back from them.

Lives here: `accounts` (sign up, confirm, preferences, leave), `subscribers` (address and
CSV input and output), `signup_limits` (the form's abuse limits), `reader_admin` (what an
operator does to one reader) and `inbound` (bounces, complaints, mailto unsubscribes and
replies, from every path that returns mail), `sunset` (readers who stopped clicking are
asked once, then unsubscribed as inactive).
May import: the top level, `digest.store`, `digest.mail` and `digest.editions`.
"""
