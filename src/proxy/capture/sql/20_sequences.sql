-- Sequence striping: the replicas draw disjoint values.

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
