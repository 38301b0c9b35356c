-- The PostgreSQL migrator's statements (stores/sql/postgres.py), run on the raw asyncpg
-- connection (their :name parameters numbered $1, $2...). Each sits under a "-- name: <name>"
-- header; kmsg_webhook_* identifiers are replaced by the configured (validated, quoted,
-- schema-qualified) names when the store loads this file. The migrations themselves are the
-- numbered files in migrations/postgresql/.

-- name: table_exists
-- Whether the table :name (quoted, schema-qualified as the store writes it) exists.
SELECT to_regclass(:name) IS NOT NULL;

-- name: schema_version
-- The newest migration recorded for the table pair :scope (0: none).
SELECT coalesce(max(version), 0) FROM kmsg_webhook_schema_version WHERE scope = :scope;

-- name: lock
-- One migrator per schema (:schema, or the connection's current one when NULL) at a time: a
-- session lock, taken before the migration's transaction begins, so a waiter's transaction
-- starts after the previous migrator committed and sees its tables.
SELECT pg_advisory_lock(hashtext('kmsg_webhook:' || coalesce(:schema, current_schema())));

-- name: unlock
SELECT pg_advisory_unlock(hashtext('kmsg_webhook:' || coalesce(:schema, current_schema())));

-- name: schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = :schema;

-- name: create_schema
-- DDL takes no parameters: {schema} is filled in with the validated, quoted name.
CREATE SCHEMA {schema};

-- name: record_version
-- Record that migration :version (:description) is applied to the table pair :scope.
INSERT INTO kmsg_webhook_schema_version (scope, version, description)
VALUES (:scope, :version, :description);
