-- Privileges. The proxy runs its own statements (the snapshot read, the
-- read-out, the ordered commit) and the capture and DDL triggers fire
-- inside the client's session, as the client's role, which need not be a
-- superuser. Reading the machinery's state is open to every role; what
-- writes it or installs triggers runs as its owner, with a search_path
-- no role can plant objects in.

GRANT USAGE ON SCHEMA tashkent TO PUBLIC;
GRANT SELECT ON tashkent.applied, tashkent.replica TO PUBLIC;

ALTER FUNCTION tashkent.take_turns(bigint, bigint)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION tashkent.install_capture(oid)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION tashkent.drop_capture(oid)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION tashkent.stripe_sequence(oid)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
