-- Which relations are replicated, their canonical names, and the tables a
-- DDL command touched.

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
