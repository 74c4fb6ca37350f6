-- Claims that read their batch, whatever the statistics (issue 12).
--
-- gateway_claim (migration 20261207000400) ran its per-user probe as an anti-join and updated the
-- claimed rows by `event_id = ANY`: plans that the planner chooses from its estimates. Analysed
-- while empty (at start-up, or after the backlog was drained), the outbox has reltuples = 0 on
-- a page, and PostgreSQL then takes it for empty however large it has grown since: the probe
-- became a full scan of outbox_lane per candidate (200,890 buffers for a claim of 10 at 20,000
-- pending) and the update a scan of the whole queue with `event_id = ANY` as a filter (716
-- buffers). The planner settings on the function do not prevent either (an index scan without
-- a condition is still an index scan).
--
-- Now every step has one plan: the due rows in order through outbox_due (the only index that
-- gives that order); for each, the probe is a statement of its own whose only
-- index condition is the lane (outbox_lane), then the row is locked by its tuple id; the claimed
-- rows are updated by their tuple ids (locked, so they cannot move), and each one's event is read by its primary key. A claim reads
-- a few pages per event it looks at, not the backlog (test: a_claim_reads_its_batch_not_the_
-- backlog_even_with_the_statistics_of_an_empty_outbox).
CREATE OR REPLACE FUNCTION gateway_claim(p_connection text, p_direction text, p_owner text,
                                         p_limit integer, p_lease_secs float8, p_probe boolean,
                                         p_dry_run boolean)
RETURNS TABLE (id bigint, received_at timestamptz, connection text, message_id text,
               user_key text, payload jsonb, request_id bigint, payload_at integer,
               payload_len integer, attempts integer, solo boolean)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_sort = off
AS $$
#variable_conflict use_column
DECLARE
    r record;
    tids tid[] := '{}';
    lo timestamptz;
    hi timestamptz;
BEGIN
    IF p_limit < 1
       -- A paused connection's events are claimed only for its probe.
       OR (NOT p_probe AND EXISTS (
               SELECT 1 FROM connection_pause p
               WHERE p.connection = p_connection AND p.direction = p_direction))
       -- A dry-run dispatcher takes nothing of a connection a live dispatcher delivers.
       OR (p_dry_run AND EXISTS (
               SELECT 1 FROM dispatcher_mode m
               WHERE m.connection = p_connection AND m.mode = 'live' AND m.alive_until > now())) THEN
        RETURN;
    END IF;
    -- Due rows, oldest first. A row whose lane has an older pending event is not claimable (the
    -- user's order); a claimable one is locked then, if it is still due and nobody holds it
    -- (SKIP LOCKED). Locking only those leaves the rest to other dispatchers: locked as read,
    -- the rows a claim passed over were skipped by a concurrent one, which then found nothing
    -- (delivery::ordering::two_dispatchers_on_one_database_never_send_the_same_event_twice
    -- failed 3 times in 15). A row another claim took since this loop's snapshot has moved
    -- (its tuple id shows a dead version) and is not found.
    FOR r IN SELECT o.ctid AS tid, o.event_id, o.received_at, o.lane FROM outbox o
             WHERE o.connection = p_connection AND o.direction = p_direction
               AND o.next_attempt_at <= now()
               AND (o.lease_until IS NULL OR o.lease_until < now())
             ORDER BY o.event_id LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM outbox older
                              WHERE older.lane = r.lane AND older.event_id < r.event_id);
        PERFORM 1 FROM outbox o
        WHERE o.ctid = r.tid
          AND o.next_attempt_at <= now() AND (o.lease_until IS NULL OR o.lease_until < now())
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        tids := tids || r.tid;
        lo := least(lo, r.received_at);
        hi := greatest(hi, r.received_at);
        EXIT WHEN cardinality(tids) >= p_limit;
    END LOOP;
    IF cardinality(tids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE outbox o
        SET lease_until = now() + make_interval(secs => p_lease_secs),
            lease_owner = p_owner, attempts = o.attempts + 1
        WHERE o.ctid = ANY (tids)
        RETURNING o.event_id, o.received_at, o.attempts, o.solo)
    SELECT e.id, e.received_at, e.connection, e.message_id, e.user_key, e.payload, e.request_id,
           e.payload_at, e.payload_len, c.attempts, c.solo
    FROM claimed c
    -- Each event by its key (a lateral subquery is run per row: no join for the planner to
    -- choose), in the day partitions of the batch only.
    CROSS JOIN LATERAL (
        SELECT * FROM event e
        WHERE e.id = c.event_id AND e.received_at = c.received_at
          AND e.received_at BETWEEN lo AND hi
        LIMIT 1) e;
END $$;
