-- The capture triggers of one table.

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
