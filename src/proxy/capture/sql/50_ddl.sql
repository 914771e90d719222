-- DDL capture: the event triggers that append one "X" entry per DDL
-- statement and keep capture installed on new tables.

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

-- Tables (formatted like table_name) a statement touched before its own
-- ddl_command_end: the objects a DROP removed (sql_drop) and the commands
-- of an extension's script. Kept transaction-local in tashkent.pending
-- until on_ddl_end writes the statement's "X" entry.
CREATE OR REPLACE FUNCTION tashkent.pend_tables(tables text[], persistent boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    prev jsonb := coalesce(nullif(current_setting('tashkent.pending', true), '')::jsonb,
                           '{"tables": [], "persistent": false}');
BEGIN
    PERFORM set_config('tashkent.pending', jsonb_build_object(
        'tables', (prev->'tables') || to_jsonb(coalesce(tables, '{}')),
        'persistent', (prev->>'persistent')::boolean OR persistent)::text, true);
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
    in_script boolean;
    pending jsonb;
    ctx text;
    q text;
    stmt text;
BEGIN
    IF current_setting('tashkent.internal', true) = 'on' THEN
        RETURN;
    END IF;
    -- Event triggers fire for every command of an extension's script, as
    -- commands of their own. They are not statements of the client: the
    -- CREATE/ALTER EXTENSION statement is replicated, and replaying it
    -- runs the same script everywhere.
    in_script := tashkent.in_extension_script();
    FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        -- Keep capture installed on the table (an extension's tables too:
        -- what its script writes is not captured, what users write later is).
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
        IF in_script THEN
            tables := tables || ARRAY(SELECT tashkent.ddl_tables(cmd.classid, cmd.objid));
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
    -- A script's tables go to the extension statement's entry, which its
    -- own ddl_command_end (after the script) writes.
    IF in_script THEN
        PERFORM tashkent.pend_tables(tables, false);
        RETURN;
    END IF;
    pending := nullif(current_setting('tashkent.pending', true), '')::jsonb;
    IF pending IS NOT NULL THEN
        PERFORM set_config('tashkent.pending', '', true);
        persistent := persistent OR (pending->>'persistent')::boolean;
        tables := tables || ARRAY(SELECT jsonb_array_elements_text(pending->'tables'));
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
        'is', current_setting('IntervalStyle'),
        'role', current_user)::text);
END
$$;

-- A dropped table takes its triggers along (and the format-1 functions of
-- an older install with it). Outside the applier, the tables the drop
-- touched are pended for the statement's "X" entry, which on_ddl_end
-- writes right after: tables dropped, and tables that lost a column,
-- default, constraint, trigger, rule or policy (DROP ... CASCADE, e.g. of
-- an extension whose type a column has). Names are read from
-- address_names, taken before the objects went; a dropped index names no
-- table.
CREATE OR REPLACE FUNCTION tashkent.on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    obj record;
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
    PERFORM tashkent.pend_tables(
        ARRAY(
            SELECT u.t FROM (
                SELECT format('%I.%I', d.address_names[1], d.address_names[2]), d.ordinality, 0
                FROM pg_event_trigger_dropped_objects() WITH ORDINALITY AS d
                WHERE d.object_type = 'table' AND NOT d.is_temporary
                  AND d.address_names[1] NOT IN ('tashkent', 'pg_catalog', 'information_schema')
                  AND d.address_names[1] NOT LIKE 'pg\_%'
                UNION ALL
                -- The table that keeps living (and its partition root).
                SELECT r.t, d.ordinality, r.ord
                FROM pg_event_trigger_dropped_objects() WITH ORDINALITY AS d
                JOIN pg_namespace n ON n.nspname = d.address_names[1]
                JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = d.address_names[2]
                CROSS JOIN LATERAL tashkent.ddl_tables('pg_class'::regclass, c.oid)
                    WITH ORDINALITY AS r(t, ord)
                WHERE d.object_type IN ('table column', 'default value', 'table constraint',
                                        'trigger', 'rule', 'policy')
                  AND NOT d.is_temporary
            ) u(t, ord, sub)
            ORDER BY u.ord, u.sub),
        EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary));
END
$$;

DROP EVENT TRIGGER IF EXISTS tashkent_ddl_end;
CREATE EVENT TRIGGER tashkent_ddl_end ON ddl_command_end EXECUTE FUNCTION tashkent.on_ddl_end();
ALTER EVENT TRIGGER tashkent_ddl_end ENABLE ALWAYS;
DROP EVENT TRIGGER IF EXISTS tashkent_sql_drop;
CREATE EVENT TRIGGER tashkent_sql_drop ON sql_drop EXECUTE FUNCTION tashkent.on_sql_drop();
ALTER EVENT TRIGGER tashkent_sql_drop ENABLE ALWAYS;
