-- The tashkent schema and its tables: the applied-version log and this
-- replica's place. Runs first; the whole install is one transaction.

-- What this script runs is machinery, not replicated DDL.
SELECT set_config('tashkent.internal', 'on', true);
SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS tashkent;

-- An install from before the log (one updated row) keeps its version.
DO $$
DECLARE
    v bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('tashkent.applied')
                 AND attname = 'singleton' AND NOT attisdropped) THEN
        SELECT max(version) INTO v FROM tashkent.applied;
        DROP TABLE tashkent.applied;
        CREATE TABLE tashkent.applied (version bigint PRIMARY KEY);
        INSERT INTO tashkent.applied (version) VALUES (coalesce(v, 0));
    END IF;
END
$$;

-- The replica's applied version is max(version): each commit inserts its
-- version in the same transaction, so it is exactly the version of the
-- replica's state.
CREATE TABLE IF NOT EXISTS tashkent.applied (version bigint PRIMARY KEY);
INSERT INTO tashkent.applied (version)
SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM tashkent.applied);

-- This replica's place among the replicas (at most one row).
CREATE TABLE IF NOT EXISTS tashkent.replica (
    id int NOT NULL,
    replicas int NOT NULL,
    CHECK (replicas >= 1 AND id BETWEEN 1 AND replicas)
);
CREATE UNIQUE INDEX IF NOT EXISTS replica_singleton ON tashkent.replica ((true));
