-- 0005 endpoint verification: an endpoint may wait for its receiver to answer a challenge
-- (status 'pending_verification'; it receives nothing until then) (SQLite).
--
-- SQLite cannot change a CHECK constraint in place: the endpoint table is rebuilt with the
-- same columns in the same order, its rows copied, and its index made again.

CREATE TABLE kmsg_webhook_endpoints_rebuild (
    id                    TEXT    NOT NULL PRIMARY KEY,
    url                   TEXT    NOT NULL,
    name                  TEXT,
    description           TEXT,
    status                TEXT    NOT NULL
        CHECK (status IN ('active', 'inactive', 'error', 'suspended', 'pending_verification')),
    events_json           TEXT    NOT NULL,
    headers_json          TEXT    NOT NULL DEFAULT '{}',
    secret                TEXT,
    previous_secrets_json TEXT    NOT NULL DEFAULT '[]',
    retry_config_json     TEXT,
    filters_json          TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL,
    last_triggered_at     INTEGER,
    disabled_reason       TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    failing_since         INTEGER,
    last_success_at       INTEGER,
    client_cert           TEXT,
    client_key            TEXT
);

INSERT INTO kmsg_webhook_endpoints_rebuild SELECT * FROM kmsg_webhook_endpoints;
DROP TABLE kmsg_webhook_endpoints;
ALTER TABLE kmsg_webhook_endpoints_rebuild RENAME TO kmsg_webhook_endpoints;

CREATE UNIQUE INDEX idx_kmsg_webhook_endpoints_url ON kmsg_webhook_endpoints (url);
