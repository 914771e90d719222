-- The commit order: versions become visible on this replica in version
-- order while their commits overlap (ARCHITECTURE.md, "The life of a
-- transaction", step 6).
--
-- The committer of versions first..last (a client's session: first =
-- last; the applier: a batch) runs `take_turns(first, last)` first: it
-- records the versions as applied and takes version `last`'s lock, a
-- transaction-level advisory lock PostgreSQL releases only after the
-- transaction is visible (or rolled back). Before its COMMIT it runs
-- `wait_turn(first - 1, xid)`: it waits for the predecessor's lock and
-- checks that the predecessor committed — an aborted predecessor aborts
-- it too (the applier then applies both from the log). The proxy sends
-- `wait_turn(p, …)` only once `take_turns(…, p)` has run, so the lock is
-- always there to wait for.
--
-- Lock keys: (1414221387, version mod 2^31), the two-int4 advisory lock
-- space; only neighbouring versions ever meet.

CREATE OR REPLACE FUNCTION tashkent.take_turns(first bigint, last bigint) RETURNS xid8
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1414221387, (last % 2147483648)::int);
    IF first = last THEN
        INSERT INTO tashkent.applied (version) VALUES (last);
    ELSE
        INSERT INTO tashkent.applied (version) SELECT generate_series(first, last);
    END IF;
    RETURN pg_current_xact_id();
END
$$;

-- `prev_xid` NULL: the predecessor is known to be committed.
CREATE OR REPLACE FUNCTION tashkent.wait_turn(prev bigint, prev_xid xid8) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(1414221387, (prev % 2147483648)::int);
    IF prev_xid IS NOT NULL AND pg_xact_status(prev_xid) IS DISTINCT FROM 'committed' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'T0001',
            MESSAGE = format('version %s did not commit before version %s', prev, prev + 1);
    END IF;
END
$$;
