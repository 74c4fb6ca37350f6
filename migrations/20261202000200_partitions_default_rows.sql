-- Partition upkeep that survives rows in the DEFAULT partitions (issue 8).
--
-- Rows land in a DEFAULT partition when their day had no partition yet (the upkeep did not run,
-- the clock jumped). Creating that day's partition then raised check_violation ("updated
-- partition constraint for default partition would be violated"), which stopped `serve` at
-- start-up; and retention dropped day partitions but never deleted old DEFAULT rows.
--
-- Now, for a day whose rows already sit in DEFAULT, the partition is created as a plain table,
-- those rows are moved into it, and it is attached: the DEFAULT partition is locked for the
-- move (inserts routed to it, and reads of it, wait a moment), so no new row of that day can
-- slip in between.
-- Retention deletes the DEFAULT rows older than the cutoff.

-- Creates the daily partitions from `from_day` for `days` days (idempotent). Rows of such a day
-- found in the DEFAULT partition are moved into the new partition.
CREATE OR REPLACE FUNCTION gateway_ensure_partitions(from_day date, days integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    col text;
    part text;
    dflt text;
    d date;
    params text;
    found_rows boolean;
    moved bigint;
BEGIN
    FOREACH t IN ARRAY ARRAY['inbound_request', 'event', 'delivery_attempt'] LOOP
        col := CASE WHEN t = 'delivery_attempt' THEN 'attempted_at' ELSE 'received_at' END;
        dflt := t || '_default';
        params := CASE WHEN t = 'event'
                       THEN 'WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05, '
                            'autovacuum_vacuum_threshold = 1000)'
                       ELSE '' END;
        FOR i IN 0 .. days - 1 LOOP
            d := from_day + i;
            part := t || '_' || to_char(d, 'YYYYMMDD');
            CONTINUE WHEN to_regclass(format('%I', part)) IS NOT NULL;
            BEGIN
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= %L AND %I < %L)',
                               dflt, col, d::timestamptz, col, (d + 1)::timestamptz)
                    INTO STRICT found_rows;
                IF NOT found_rows THEN
                    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L) %s',
                                   part, t, d::timestamptz, (d + 1)::timestamptz, params);
                ELSE
                    -- Nothing may be routed to DEFAULT while its rows of that day move out. The
                    -- strongest lock at once: ATTACH needs it anyway, and taking a weaker one first
                    -- then upgrading could deadlock with a claim holding a row lock there.
                    EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', dflt);
                    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                                   'INCLUDING STORAGE INCLUDING COMPRESSION) %s', part, t, params);
                    EXECUTE format('WITH m AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                                   'INSERT INTO %I SELECT * FROM m',
                                   dflt, col, d::timestamptz, col, (d + 1)::timestamptz, part);
                    GET DIAGNOSTICS moved = ROW_COUNT;
                    -- ATTACH builds the partition's indexes (those of the parent) and checks that
                    -- DEFAULT holds no row of the range any more.
                    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                                   t, part, d::timestamptz, (d + 1)::timestamptz);
                    RAISE NOTICE 'gateway_ensure_partitions: moved % rows of % from % into %',
                                 moved, d, dflt, part;
                END IF;
            EXCEPTION
                WHEN duplicate_table THEN
                    NULL;  -- another gateway created it first
                WHEN check_violation OR invalid_object_definition OR deadlock_detected THEN
                    -- Should not happen (the rows were moved under a lock); if it does, that day
                    -- keeps living in DEFAULT rather than stopping start-up. Retention reaches it.
                    RAISE WARNING 'gateway_ensure_partitions: % not created, its rows stay in %: %',
                                  part, dflt, SQLERRM;
            END;
        END LOOP;
    END LOOP;
END $$;

-- Retention: drops the daily partitions older than `before_day` and deletes the DEFAULT
-- partitions' rows older than it; returns how many partitions were dropped.
CREATE OR REPLACE FUNCTION gateway_drop_partitions_before(before_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
    t text;
    deleted bigint;
BEGIN
    FOR r IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('inbound_request', 'event', 'delivery_attempt')
          AND c.relname ~ '_[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < before_day
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        n := n + 1;
    END LOOP;
    FOREACH t IN ARRAY ARRAY['inbound_request', 'event', 'delivery_attempt'] LOOP
        EXECUTE format('DELETE FROM %I WHERE %I < %L', t || '_default',
                       CASE WHEN t = 'delivery_attempt' THEN 'attempted_at' ELSE 'received_at' END,
                       before_day::timestamptz);
        GET DIAGNOSTICS deleted = ROW_COUNT;
        IF deleted > 0 THEN
            RAISE NOTICE 'gateway_drop_partitions_before: deleted % rows from %_default', deleted, t;
        END IF;
    END LOOP;
    DELETE FROM message_seen WHERE first_seen < before_day;
    RETURN n;
END $$;
