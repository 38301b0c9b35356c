"""Cloudflare D1 persistence over the D1 REST API (or ``adapters/d1-worker``, which speaks it).

    from kmsg_webhook.stores.d1 import d1_persistence_from_url

    persistence = d1_persistence_from_url("d1://<account_id>/<database_id>")  # CLOUDFLARE_API_TOKEN
    persistence = d1_persistence_from_url("d1+http://127.0.0.1:8787/<account>/<db>?token=...")

See ``docs/d1.md``.
"""

from .client import (
    CLOUDFLARE_API_BASE_URL,
    D1Client,
    D1Limits,
    D1RawResult,
    D1Response,
    D1Result,
    D1Statement,
    D1Value,
)
from .errors import (
    D1AuthError,
    D1Error,
    D1LimitError,
    D1QueryError,
    D1RateLimitedError,
    D1SchemaError,
    D1UnavailableError,
)
from .schema import (
    DEFAULT_DELIVERY_TABLE,
    DEFAULT_ENDPOINT_TABLE,
    D1Tables,
    build_webhook_schema_sql,
    initialize_webhook_schema,
)
from .store import D1DeliveryStore, D1EndpointStore, create_d1_persistence
from .url import TOKEN_ENV_VAR, D1Location, d1_persistence_from_url, parse_d1_url, redact_url

__all__ = [
    "CLOUDFLARE_API_BASE_URL",
    "DEFAULT_DELIVERY_TABLE",
    "DEFAULT_ENDPOINT_TABLE",
    "TOKEN_ENV_VAR",
    "D1AuthError",
    "D1Client",
    "D1DeliveryStore",
    "D1EndpointStore",
    "D1Error",
    "D1LimitError",
    "D1Limits",
    "D1Location",
    "D1QueryError",
    "D1RateLimitedError",
    "D1RawResult",
    "D1Response",
    "D1Result",
    "D1SchemaError",
    "D1Statement",
    "D1Tables",
    "D1UnavailableError",
    "D1Value",
    "build_webhook_schema_sql",
    "create_d1_persistence",
    "d1_persistence_from_url",
    "initialize_webhook_schema",
    "parse_d1_url",
    "redact_url",
]
