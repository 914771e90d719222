-- Last: capture on what exists already; the install's own DDL ends here.

-- Capture on every table that exists already.
SELECT tashkent.install_capture(c.oid) FROM pg_class c
WHERE c.relkind IN ('r', 'p') AND tashkent.is_user_relation(c.oid);

-- Stripe sequences again if this replica is configured (a re-install).
SELECT tashkent.stripe_sequence(c.oid) FROM pg_class c
WHERE c.relkind = 'S' AND tashkent.is_user_relation(c.oid);

SELECT set_config('tashkent.internal', '', true);
