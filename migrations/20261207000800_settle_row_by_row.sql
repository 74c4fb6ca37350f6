-- Settles whose plan does not depend on the statistics of the moment (issue 12, seventh
-- session).
--
-- gateway_settle (20261207000700) is planned once per connection (force_generic_plan). Under
-- load, `auto_explain` showed the plan the gateway's connections had made at start-up, when the
-- outbox was empty: its DELETE read the whole queue of the connection with `event_id = ANY`
-- as a filter, and its UPDATE of `event` scanned the day partition and compared each row with
-- each settled event (a nested loop with the settled events materialised inside it): 16.6 ms
-- for 149 events, 2,576 buffers for 10 in the test with the statistics of an empty outbox. A
-- backend that plans it with a grown outbox gets the right plan (1.7 ms); which one a
-- connection keeps was luck.
--
-- Now:
-- * the outbox rows are read within the range of the batch's event ids (an index condition,
--   whatever the statistics), `= ANY` filtering inside it;
-- * each event row is found by its key through a lateral subquery (run once per settled event,
--   so there is no join order for the planner to choose), and updated by its tuple id;
-- * going back to pending and settling for good are two statements chosen in PL/pgSQL, not
--   two CTEs with one-time filters.
-- What a settle does is unchanged.

CREATE OR REPLACE FUNCTION gateway_settle(p_owner text, p_connection text, p_direction text,
                               p_kind text, p_reason text, p_action text,
                               p_ids bigint[], p_delays float8[],
                               p_lo timestamptz, p_hi timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_sort = off SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    n bigint;
    first_id bigint;
    last_id bigint;
    keys uuid[];
BEGIN
    SELECT min(i), max(i) INTO first_id, last_id FROM unnest(p_ids) i;
    IF p_kind IN ('retry', 'split', 'release', 'pause') THEN
        -- Back to pending, each due after its own delay. A split, a release and a pause give
        -- the attempt back: the event was not refused on its own, or not sent. The event row
        -- is written only when what it says changes.
        WITH kept AS (
            UPDATE outbox b
            SET next_attempt_at = now() + p_delays[array_position(p_ids, b.event_id)]
                                          * interval '1 millisecond',
                solo = b.solo OR p_kind = 'split',
                attempts = b.attempts - (p_kind IN ('split', 'release', 'pause'))::int,
                lease_until = NULL, lease_owner = NULL
            WHERE b.connection = p_connection AND b.direction = p_direction
              AND b.event_id BETWEEN first_id AND last_id
              AND b.event_id = ANY (p_ids) AND b.lease_owner = p_owner
            RETURNING b.event_id, b.received_at),
        changed AS (
            SELECT x.tid, x.part
            FROM kept k
            CROSS JOIN LATERAL (
                SELECT e.ctid AS tid, e.tableoid AS part FROM event e
                WHERE e.id = k.event_id AND e.received_at = k.received_at
                  AND e.received_at BETWEEN p_lo AND p_hi
                  AND (e.state_reason IS DISTINCT FROM p_reason
                       OR e.action IS DISTINCT FROM coalesce(p_action, e.action))
                LIMIT 1) x),
        settled AS (
            UPDATE event e
            SET state = 'pending', state_reason = p_reason, action = coalesce(p_action, e.action),
                updated_at = now()
            FROM changed c
            WHERE e.ctid = c.tid AND e.tableoid = c.part AND e.received_at BETWEEN p_lo AND p_hi)
        SELECT count(*) INTO n FROM kept;
        RETURN n;
    END IF;
    -- Settled for good: out of the outbox, the outcome on the event row.
    WITH gone AS (
        DELETE FROM outbox b
        WHERE b.connection = p_connection AND b.direction = p_direction
          AND b.event_id BETWEEN first_id AND last_id
          AND b.event_id = ANY (p_ids) AND b.lease_owner = p_owner
        RETURNING b.event_id, b.received_at, b.attempts, b.solo),
    found AS (
        SELECT x.tid, x.part, g.attempts, g.solo
        FROM gone g
        CROSS JOIN LATERAL (
            SELECT e.ctid AS tid, e.tableoid AS part FROM event e
            WHERE e.id = g.event_id AND e.received_at = g.received_at
              AND e.received_at BETWEEN p_lo AND p_hi
            LIMIT 1) x),
    settled AS (
        UPDATE event e
        SET state = p_kind, state_reason = p_reason, action = coalesce(p_action, e.action),
            attempts = f.attempts, solo = f.solo,
            failed_at = CASE WHEN p_kind IN ('failed', 'dead') THEN now() ELSE e.failed_at END,
            updated_at = now()
        FROM found f
        WHERE e.ctid = f.tid AND e.tableoid = f.part AND e.received_at BETWEEN p_lo AND p_hi
        RETURNING e.connection, e.direction, e.message_id)
    SELECT (SELECT count(*) FROM gone),
           (SELECT array_agg(gateway_message_key(s.connection, s.direction, s.message_id))
            FROM settled s WHERE p_kind = 'dry_run')
    INTO n, keys;
    -- A dry run gives its messageIds back: live delivery may send them later.
    IF keys IS NOT NULL THEN
        DELETE FROM message_seen m WHERE m.key = ANY (keys);
    END IF;
    RETURN n;
END $$;
