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

-- name: table_columns
-- The column names of the table :name (unquoted); no rows when it does not exist. D1's schema
-- check runs this to tell an older or the original adapter's table from the current one.
SELECT name FROM pragma_table_info(:name);

-- name: table_definition
-- The CREATE TABLE text of the table :name, as SQLite keeps it.
SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name;

-- name: schema_tables
-- Every table with its CREATE TABLE text (D1 reads the migrated tables back from an in-memory
-- SQLite this way).
SELECT name, sql FROM sqlite_master WHERE type = 'table';

-- name: schema_indexes
-- The CREATE INDEX texts on the tables :endpoints and :deliveries, in the order they were made.
SELECT sql FROM sqlite_master
WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN (:endpoints, :deliveries)
ORDER BY rowid;
