"""Where endpoints and deliveries are kept.

One protocol (:mod:`.protocol`), an in-memory store the conformance suite runs against like any
other (:mod:`.memory`), the SQL backends (:mod:`.sql`: SQLite and PostgreSQL), Cloudflare D1
over HTTP (:mod:`.d1`), the field-crypto wrapper every backend can be sealed with
(:mod:`.sealed`), the row codec the durable backends share (:mod:`.rows`), and opening a store
from a URL (:mod:`.url`). Backends import the protocol and the shared helpers, never each other.
"""
