-- tashkent writeset capture, installed into every replica database by the
-- proxy (`capture::install`, which substitutes the capture library's path
-- for @LIBRARY@).
--
-- Capture: every replicated table (a permanent table outside the system and
-- tashkent schemas; partitions through their root) gets an AFTER ... FOR
-- EACH ROW trigger running `tashkent.capture_row()`, and every such table
-- and partition an AFTER TRUNCATE trigger. Both are C functions of the
-- capture library (`tashkent_capture.c`, whose header documents the
-- entries they append to the transaction's buffer); `tashkent.ws_read()`
-- hands the buffer out. The DDL event trigger below installs the triggers
-- on tables created later and appends one "X" entry per DDL statement.
--
-- DDL: one entry per top-level client statement that changes persistent
-- objects, appended by the ddl_command_end event trigger, a JSON object:
--   {"t": "<first affected table>" or "tashkent.catalog", "op": "X",
--    "sql": current_query(), "tables": [affected tables, like "t"],
--    "path": search_path, "tz": TimeZone, "ds": DateStyle, "is": IntervalStyle}
-- Affected tables: tables created/altered, the tables of indexes,
-- constraints, triggers, rules, policies, defaults and owned sequences
-- (and a partition's root), and the tables a DROP removed. Apply executes
-- "sql" in its position among the entries, under the captured search_path
-- and date/time settings. The entry is the statement's text, so:
--   * the DDL must be a client statement of its own (one query string with
--     nothing else in it): DDL run inside a function or DO block is refused
--     (0A000), as is a second DDL statement or a captured INSERT/UPDATE/
--     DELETE/TRUNCATE after DDL in the same query string (both detected by
--     statement_timestamp(), i.e. per client message). A data statement
--     placed BEFORE a DDL statement in the same query string cannot be
--     detected and would be replayed twice: clients (the proxy) must send
--     DDL alone.
--   * DDL whose result depends on anything else of the session or the
--     moment (current_user / SET ROLE, now(), random(), temporary objects,
--     default_tablespace, ...) can give different results on the replicas.
--   * DDL on temporary objects only, and DDL that changed nothing (CREATE
--     ... IF NOT EXISTS of an existing object), gives no entry. Statements
--     that fire no event trigger are not replicated: DDL on shared objects
--     (roles, databases, tablespaces), REINDEX, CLUSTER, VACUUM (no content
--     changes), and EXPLAIN ANALYZE CREATE TABLE AS (don't). TRUNCATE is
--     captured as "T" entries by its table trigger instead.
--   * DROP INDEX lists no table (the index's table cannot be looked up
--     once it is dropped); it only relaxes constraints.
-- DDL that the capture machinery runs itself (installing triggers,
-- striping sequences, this script) sets `tashkent.internal` and is never
-- captured.
--
-- Tables without a primary key replicate INSERT and TRUNCATE only; UPDATE
-- and DELETE on them fail with SQLSTATE 0A000, because without a key a row
-- cannot be found on the other replicas.
--
-- Sequences: `tashkent.configure_replica(id, replicas)` records this
-- replica's place (table tashkent.replica) and sets every user sequence to
-- INCREMENT BY replicas, restarted at the first unused value that is
-- congruent to id modulo replicas; the event trigger does the same for
-- sequences created or altered later (CREATE SEQUENCE, serial and identity
-- columns), on the origin and where the applier replays the DDL, so the
-- replicas draw disjoint values. setval() is not DDL and is not watched.
--
-- Apply (`capture::apply`, in the proxy): the applier session runs with
-- session_replication_role = replica, so the capture triggers (and
-- foreign-key checks, already certified at the origin) do not fire there,
-- and the DDL event trigger, which is ENABLE ALWAYS, keeps capture
-- installed and sequences striped on tables created by replicated DDL but
-- captures no "X" entry there.
--
-- The applied version: `tashkent.applied` is an insert-only log (one row
-- per committed version, pruned from below), so concurrent commits never
-- update the same row; the replica's applied version is its max.

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

-- (PL/pgSQL: a SQL function returning void is not inlined, and its body

-- The canonical name of a table: schema-qualified, identifiers quoted as needed.
CREATE OR REPLACE FUNCTION tashkent.table_name(rel oid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;

-- True for tables whose changes are replicated.
CREATE OR REPLACE FUNCTION tashkent.is_replicated(rel oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT c.relkind IN ('r', 'p')
       AND c.relpersistence <> 't'
       AND NOT c.relispartition
       AND n.nspname NOT IN ('tashkent', 'pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\_%'
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;


-- True for relations of users: permanent, outside the system and tashkent schemas.
CREATE OR REPLACE FUNCTION tashkent.is_user_relation(rel oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT c.relpersistence <> 't'
       AND n.nspname NOT IN ('tashkent', 'pg_catalog', 'information_schema')
       AND n.nspname NOT LIKE 'pg\_%'
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = rel
$$;

-- The tables (formatted like table_name) that a DDL command's object
-- belongs to: the table itself, an index's, constraint's, trigger's, rule's,
-- policy's, default's or extended statistics' table, an owned sequence's
-- table; a partition's root too.
CREATE OR REPLACE FUNCTION tashkent.ddl_tables(cls oid, obj oid) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    WITH owner AS (
        SELECT CASE
            WHEN cls = 'pg_class'::regclass THEN (
                SELECT CASE
                    WHEN c.relkind IN ('r', 'p') THEN c.oid
                    WHEN c.relkind IN ('i', 'I') THEN (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = c.oid)
                    WHEN c.relkind = 'S' THEN (
                        SELECT d.refobjid FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
                        LIMIT 1)
                END
                FROM pg_class c WHERE c.oid = obj)
            WHEN cls = 'pg_constraint'::regclass THEN (SELECT nullif(conrelid, 0) FROM pg_constraint WHERE oid = obj)
            WHEN cls = 'pg_trigger'::regclass THEN (SELECT tgrelid FROM pg_trigger WHERE oid = obj)
            WHEN cls = 'pg_rewrite'::regclass THEN (SELECT ev_class FROM pg_rewrite WHERE oid = obj)
            WHEN cls = 'pg_policy'::regclass THEN (SELECT polrelid FROM pg_policy WHERE oid = obj)
            WHEN cls = 'pg_attrdef'::regclass THEN (SELECT adrelid FROM pg_attrdef WHERE oid = obj)
            WHEN cls = 'pg_statistic_ext'::regclass THEN (SELECT stxrelid FROM pg_statistic_ext WHERE oid = obj)
        END AS rel
    )
    SELECT tashkent.table_name(t.rel)
    FROM owner,
         LATERAL (SELECT owner.rel, 1
                  UNION ALL
                  SELECT r, 2 FROM pg_partition_root(owner.rel) r WHERE r <> owner.rel) t(rel, ord)
    JOIN pg_class c ON c.oid = t.rel
    WHERE c.relkind IN ('r', 'p') AND tashkent.is_user_relation(t.rel)
    ORDER BY t.ord
$$;

-- Makes a sequence draw only values congruent to this replica's id modulo
-- the number of replicas (tashkent.replica; nothing when it is empty):
-- INCREMENT BY replicas (negated for a descending sequence), restarted at
-- the first value not yet handed out that has the residue. A sequence that
-- is striped already is left alone.
CREATE OR REPLACE FUNCTION tashkent.stripe_sequence(seq oid) RETURNS void
LANGUAGE plpgsql SET tashkent.internal = 'on' AS $$
DECLARE
    cfg record;
    s record;
    last bigint;
    called boolean;
    n bigint;
    inc bigint;
    upcoming bigint;
    target bigint;
BEGIN
    SELECT r.id, r.replicas INTO cfg FROM tashkent.replica r;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO s FROM pg_sequence WHERE seqrelid = seq;
    IF NOT FOUND OR NOT tashkent.is_user_relation(seq) THEN
        RETURN;
    END IF;
    EXECUTE format('SELECT last_value, is_called FROM %s', tashkent.table_name(seq)) INTO last, called;
    n := cfg.replicas;
    IF s.seqincrement > 0 THEN
        inc := n;
        upcoming := CASE WHEN called THEN last + s.seqincrement ELSE last END;
        target := CASE WHEN called THEN last + 1 ELSE last END;
        target := target + (((cfg.id - target) % n) + n) % n;
    ELSE
        inc := -n;
        upcoming := CASE WHEN called THEN last + s.seqincrement ELSE last END;
        target := CASE WHEN called THEN last - 1 ELSE last END;
        target := target - (((target - cfg.id) % n) + n) % n;
    END IF;
    IF s.seqincrement = inc AND upcoming = target THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER SEQUENCE %s INCREMENT BY %s RESTART WITH %s',
        tashkent.table_name(seq), inc, target);
END
$$;

-- Moves this replica's sequences past the values of its own stripe found
-- in the columns they own (serial and identity columns of the tables named
-- in `tables`, every table when NULL). Needed after a rebuild: the
-- restored sequences hold the checkpoint's state (perhaps another
-- replica's), while the replayed log brings back rows whose values this
-- replica handed out later. Only columns that lead a unique index are
-- looked at: a value drawn twice can only fail there (23505), and the
-- index makes the lookup one backward scan. Sequences only move forward
-- (setval is not transactional, so a rolled-back caller still leaves them
-- safe). A column that cannot be handled (a value outside the sequence's
-- range, a table gone) is skipped with a warning: this runs inside the
-- applier's transactions, which must not fail because of it.
CREATE OR REPLACE FUNCTION tashkent.advance_sequences(tables text[]) RETURNS void
LANGUAGE plpgsql SET tashkent.internal = 'on' AS $$
DECLARE
    cfg record;
    d record;
    s record;
    top bigint;
    last bigint;
    called boolean;
    upcoming bigint;
    n bigint;
    residue bigint;
BEGIN
    SELECT r.id, r.replicas INTO cfg FROM tashkent.replica r;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    n := cfg.replicas;
    residue := cfg.id % n;
    FOR d IN
        SELECT dep.objid AS seq, dep.refobjid AS rel, a.attname
        FROM pg_depend dep
        JOIN pg_class sc ON sc.oid = dep.objid AND sc.relkind = 'S'
        JOIN pg_attribute a ON a.attrelid = dep.refobjid AND a.attnum = dep.refobjsubid
        WHERE dep.classid = 'pg_class'::regclass
          AND dep.refclassid = 'pg_class'::regclass
          AND dep.deptype IN ('a', 'i')
          AND a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
          AND NOT a.attisdropped
          AND tashkent.is_user_relation(dep.objid)
          AND EXISTS (SELECT 1 FROM pg_index i
                      WHERE i.indrelid = dep.refobjid AND i.indisunique
                        AND i.indkey[0] = dep.refobjsubid)
          AND (tables IS NULL
               OR dep.refobjid IN (SELECT to_regclass(t) FROM unnest(tables) t))
    LOOP
        BEGIN
            SELECT * INTO STRICT s FROM pg_sequence WHERE seqrelid = d.seq;
            EXECUTE format(
                'SELECT %1$I FROM %2$s WHERE ((%1$I %% %3$s) + %3$s) %% %3$s = %4$s '
                'ORDER BY %1$I %5$s LIMIT 1',
                d.attname, tashkent.table_name(d.rel), n, residue,
                CASE WHEN s.seqincrement > 0 THEN 'DESC' ELSE 'ASC' END)
            INTO top;
            CONTINUE WHEN top IS NULL OR top < s.seqmin OR top > s.seqmax;
            EXECUTE format('SELECT last_value, is_called FROM %s', tashkent.table_name(d.seq))
            INTO last, called;
            upcoming := CASE WHEN called THEN last + s.seqincrement ELSE last END;
            IF (s.seqincrement > 0 AND top >= upcoming)
               OR (s.seqincrement < 0 AND top <= upcoming) THEN
                PERFORM setval(d.seq, top, true);
            END IF;
        EXCEPTION WHEN others THEN
            RAISE WARNING 'tashkent: sequence % of %.% not advanced: %',
                d.seq::regclass, d.rel::regclass, d.attname, SQLERRM;
        END;
    END LOOP;
END
$$;

-- Records this replica's place and stripes every user sequence.
CREATE OR REPLACE FUNCTION tashkent.configure_replica(id int, replicas int) RETURNS void
LANGUAGE plpgsql SET tashkent.internal = 'on' AS $$
BEGIN
    IF configure_replica.replicas IS NULL OR configure_replica.id IS NULL
       OR configure_replica.replicas < 1
       OR configure_replica.id NOT BETWEEN 1 AND configure_replica.replicas THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('tashkent replica id %s is not in 1..%s (replicas)',
                             configure_replica.id, configure_replica.replicas);
    END IF;
    DELETE FROM tashkent.replica;
    INSERT INTO tashkent.replica (id, replicas)
    VALUES (configure_replica.id, configure_replica.replicas);
    PERFORM tashkent.stripe_sequence(c.oid)
    FROM pg_class c
    WHERE c.relkind = 'S' AND tashkent.is_user_relation(c.oid);
END
$$;

-- The capture library (capture format 2, see tashkent_capture.c).
CREATE OR REPLACE FUNCTION tashkent.capture_row() RETURNS trigger
LANGUAGE c AS '@LIBRARY@', 'tashkent_capture_row';
CREATE OR REPLACE FUNCTION tashkent.capture_truncate() RETURNS trigger
LANGUAGE c AS '@LIBRARY@', 'tashkent_capture_truncate';
CREATE OR REPLACE FUNCTION tashkent.ws_append_ddl(entry text) RETURNS void
LANGUAGE c STRICT AS '@LIBRARY@', 'tashkent_ws_append_ddl';
CREATE OR REPLACE FUNCTION tashkent.ws_read() RETURNS SETOF bytea
LANGUAGE c AS '@LIBRARY@', 'tashkent_ws_read';
CREATE OR REPLACE FUNCTION tashkent.ws_size() RETURNS bigint
LANGUAGE c AS '@LIBRARY@', 'tashkent_ws_size';
CREATE OR REPLACE FUNCTION tashkent.capture_version() RETURNS int
LANGUAGE c IMMUTABLE AS '@LIBRARY@', 'tashkent_capture_version';

-- Capture format 1 (before the library): PL/pgSQL generated per table, and
-- its helpers. Removed wherever an older install left them.
DROP FUNCTION IF EXISTS tashkent.apply(text);
DROP FUNCTION IF EXISTS tashkent.append(text);
DROP FUNCTION IF EXISTS tashkent.key_sql(text, text[], text, text);
DROP FUNCTION IF EXISTS tashkent.index_columns(oid);
DROP FUNCTION IF EXISTS tashkent.refuse_mixed_query();
DROP FUNCTION IF EXISTS tashkent.chunk_keys_sql(text, text[]);
DROP FUNCTION IF EXISTS tashkent.settings_free_type(oid);

-- Removes a table's format-1 capture functions (and with them their
-- triggers), by oid.
CREATE OR REPLACE FUNCTION tashkent.drop_capture(rel oid) RETURNS void
LANGUAGE plpgsql
SET client_min_messages = warning
SET tashkent.internal = 'on'
AS $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS sig FROM pg_proc p
        WHERE p.pronamespace = 'tashkent'::regnamespace
          AND p.proname LIKE 'capture\_' || rel::text || '\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', f.sig);
    END LOOP;
END
$$;

-- Installs the capture triggers on one table: the row trigger on a table
-- that is not a partition (a partitioned table passes it on to its
-- partitions, whose rows are captured as the root's), the TRUNCATE trigger
-- on every user table and partition (TRUNCATE of one partition is its own
-- statement). Idempotent.
CREATE OR REPLACE FUNCTION tashkent.install_capture(rel oid) RETURNS void
LANGUAGE plpgsql SET tashkent.internal = 'on' SET client_min_messages = warning AS $$
DECLARE
    tname text := tashkent.table_name(rel);
    c record;
BEGIN
    SELECT cl.relkind, cl.relispartition INTO c FROM pg_class cl WHERE cl.oid = rel;
    IF tname IS NULL OR c.relkind NOT IN ('r', 'p') OR NOT tashkent.is_user_relation(rel) THEN
        RETURN;
    END IF;
    PERFORM tashkent.drop_capture(rel);
    IF NOT c.relispartition AND NOT EXISTS (
        SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'tashkent_capture') THEN
        EXECUTE format('CREATE TRIGGER tashkent_capture AFTER INSERT OR UPDATE OR DELETE ON %s
            FOR EACH ROW EXECUTE FUNCTION tashkent.capture_row()', tname);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = rel AND tgname = 'tashkent_capture_t') THEN
        EXECUTE format('CREATE TRIGGER tashkent_capture_t AFTER TRUNCATE ON %s
            FOR EACH STATEMENT EXECUTE FUNCTION tashkent.capture_truncate()', tname);
    END IF;
END
$$;

-- The query text without leading white space and comments.
CREATE OR REPLACE FUNCTION tashkent.statement_start(q text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    before text;
BEGIN
    LOOP
        before := q;
        q := regexp_replace(q, '^\s+', '');
        q := regexp_replace(q, '^--[^\n]*', '');
        q := regexp_replace(q, '^/\*.*?\*/', '');
        EXIT WHEN q = before;
    END LOOP;
    RETURN q;
END
$$;

CREATE OR REPLACE FUNCTION tashkent.on_ddl_end() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    cmd record;
    rel oid;
    tables text[] := '{}';
    seqs oid[] := '{}';
    persistent boolean := false;
    dropped jsonb;
    ctx text;
    q text;
    stmt text;
BEGIN
    IF current_setting('tashkent.internal', true) = 'on' THEN
        RETURN;
    END IF;
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        -- Keep capture installed on the table.
        rel := CASE
            WHEN cmd.classid = 'pg_class'::regclass AND cmd.object_type = 'table' THEN cmd.objid
            WHEN cmd.classid = 'pg_class'::regclass AND cmd.object_type = 'index'
                THEN (SELECT indrelid FROM pg_index WHERE indexrelid = cmd.objid)
            WHEN cmd.classid = 'pg_constraint'::regclass
                THEN (SELECT conrelid FROM pg_constraint WHERE oid = cmd.objid)
        END;
        IF rel IS NOT NULL THEN
            PERFORM tashkent.install_capture(rel);
        END IF;
        CONTINUE WHEN cmd.in_extension;
        persistent := persistent OR cmd.schema_name IS DISTINCT FROM 'pg_temp';
        tables := tables || ARRAY(SELECT tashkent.ddl_tables(cmd.classid, cmd.objid));
        -- Sequences created or altered, directly or as a table's column.
        IF cmd.classid = 'pg_class'::regclass THEN
            seqs := seqs || ARRAY(
                SELECT c.oid FROM pg_class c WHERE c.oid = cmd.objid AND c.relkind = 'S'
                UNION ALL
                SELECT d.objid FROM pg_depend d JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
                WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                  AND d.refobjid = cmd.objid AND d.deptype IN ('a', 'i'));
        END IF;
    END LOOP;
    -- Striping is every replica's own business: here too when applying.
    PERFORM tashkent.stripe_sequence(s) FROM (SELECT DISTINCT unnest(seqs) AS s) u;

    IF current_setting('session_replication_role') = 'replica' THEN
        RETURN;
    END IF;
    dropped := nullif(current_setting('tashkent.dropped', true), '')::jsonb;
    IF dropped IS NOT NULL THEN
        PERFORM set_config('tashkent.dropped', '', true);
        persistent := persistent OR (dropped->>'persistent')::boolean;
        tables := tables || ARRAY(SELECT jsonb_array_elements_text(dropped->'tables'));
    END IF;
    -- Temporary objects only, or nothing changed: nothing to replicate.
    IF NOT persistent THEN
        RETURN;
    END IF;

    GET DIAGNOSTICS ctx = PG_CONTEXT;
    q := tashkent.statement_start(current_query());
    IF position(E'\n' IN ctx) > 0
       OR NOT (q ~* '^(CREATE|ALTER|DROP|COMMENT|GRANT|REVOKE|SECURITY|IMPORT|REFRESH|REASSIGN)\M'
               OR (tg_tag = 'SELECT INTO' AND q ~* '^(SELECT|WITH)\M')) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s inside a function or DO block is not replicated by tashkent', tg_tag),
            HINT = 'Run the DDL statement directly, as a query of its own.';
    END IF;
    stmt := extract(epoch FROM statement_timestamp())::text;
    IF current_setting('tashkent.ddl_at', true) = stmt THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = 'tashkent does not replicate a query string that holds several DDL statements',
            HINT = 'Send each DDL statement as a query of its own.';
    END IF;
    PERFORM set_config('tashkent.ddl_at', stmt, true);

    tables := ARRAY(SELECT t FROM unnest(tables) WITH ORDINALITY AS u(t, ord) GROUP BY t ORDER BY min(ord));
    PERFORM tashkent.ws_append_ddl(jsonb_build_object(
        't', coalesce(tables[1], 'tashkent.catalog'),
        'op', 'X',
        'sql', current_query(),
        'tables', to_jsonb(tables),
        'path', current_setting('search_path'),
        'tz', current_setting('TimeZone'),
        'ds', current_setting('DateStyle'),
        'is', current_setting('IntervalStyle'))::text);
END
$$;

-- A dropped table takes its triggers along (and the format-1 functions of
-- an older install with it). Outside the applier, the dropped tables are
-- kept (transaction-local) for the statement's "X" entry, which on_ddl_end
-- writes right after.
CREATE OR REPLACE FUNCTION tashkent.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    obj record;
    prev jsonb;
BEGIN
    IF current_setting('tashkent.internal', true) = 'on' THEN
        RETURN;
    END IF;
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects() WHERE object_type = 'table' LOOP
        PERFORM tashkent.drop_capture(obj.objid);
    END LOOP;
    IF current_setting('session_replication_role') = 'replica' THEN
        RETURN;
    END IF;
    prev := coalesce(nullif(current_setting('tashkent.dropped', true), '')::jsonb,
                     '{"tables": [], "persistent": false}');
    PERFORM set_config('tashkent.dropped', jsonb_build_object(
        'tables', (prev->'tables') || coalesce((
            SELECT jsonb_agg(format('%I.%I', d.schema_name, d.object_name) ORDER BY d.ordinality)
            FROM pg_event_trigger_dropped_objects() WITH ORDINALITY AS d
            WHERE d.object_type = 'table' AND NOT d.is_temporary
              AND d.schema_name NOT IN ('tashkent', 'pg_catalog', 'information_schema')
              AND d.schema_name NOT LIKE 'pg\_%'), '[]'),
        'persistent', (prev->>'persistent')::boolean
            OR EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary)
    )::text, true);
END
$$;

DROP EVENT TRIGGER IF EXISTS tashkent_ddl_end;
CREATE EVENT TRIGGER tashkent_ddl_end ON ddl_command_end EXECUTE FUNCTION tashkent.on_ddl_end();
ALTER EVENT TRIGGER tashkent_ddl_end ENABLE ALWAYS;
DROP EVENT TRIGGER IF EXISTS tashkent_sql_drop;
CREATE EVENT TRIGGER tashkent_sql_drop ON sql_drop EXECUTE FUNCTION tashkent.on_sql_drop();
ALTER EVENT TRIGGER tashkent_sql_drop ENABLE ALWAYS;

-- Capture on every table that exists already.
SELECT tashkent.install_capture(c.oid) FROM pg_class c
WHERE c.relkind IN ('r', 'p') AND tashkent.is_user_relation(c.oid);

-- Stripe sequences again if this replica is configured (a re-install).
SELECT tashkent.stripe_sequence(c.oid) FROM pg_class c
WHERE c.relkind = 'S' AND tashkent.is_user_relation(c.oid);

SELECT set_config('tashkent.internal', '', true);
