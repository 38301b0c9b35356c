-- The SQLite migrator's statements (stores/sql/sqlite.py), run on the raw aiosqlite connection.
-- Each sits under a "-- name: <name>" header; kmsg_webhook_* identifiers are replaced by the
-- configured (validated, quoted) names when the store loads this file. The migrations
-- themselves are the numbered files in migrations/sqlite/.

-- name: table_exists
-- Whether the table :name (unquoted, as sqlite_master keeps it) exists.
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name;

-- name: schema_version
-- The newest migration recorded for the table pair :scope (0: none).
SELECT coalesce(max(version), 0) FROM kmsg_webhook_schema_version WHERE scope = :scope;

-- name: record_version
-- Record that migration :version (:description) is applied to the table pair :scope.
INSERT INTO kmsg_webhook_schema_version (scope, version, description)
VALUES (:scope, :version, :description);
