-- Settles in place (issue 12).
--
-- Since migration 20261207000400 an event row is updated once, when it settles. PostgreSQL updates
-- a row in place (HOT: no new entry in any index, and the old version pruned with the page)
-- only when no column any index names changes, in its key or its predicate. `state` was the
-- predicate of event_settled_bad, so every settle wrote the event's new version into each of its
-- indexes. The failed and dead events are now found by a column of their own, `failed_at`, set
-- only when an event fails (and NULL for every other settle, so unchanged): settles that
-- deliver, skip or release change no indexed column, and go in place where the page has room
-- (the day partitions keep 30 % free).
--
-- Measured at 5,000 events/s (scripts/bench-load --modes rate, with the index dropped): 71 % of
-- event updates in place.

ALTER TABLE event ADD COLUMN failed_at timestamptz;
UPDATE event SET failed_at = updated_at WHERE state IN ('failed', 'dead');
CREATE INDEX event_failed ON event (failed_at) WHERE failed_at IS NOT NULL;
DROP INDEX event_settled_bad;

-- As in 20261202000700, the events refused without an attempt found by failed_at.
CREATE OR REPLACE FUNCTION gateway_failures(since timestamptz)
RETURNS TABLE (endpoint text, status smallint, partner_code text, outcome text, attempts bigint,
               events bigint, first_seen timestamptz, last_seen timestamptz, connection text,
               direction text, reason text)
LANGUAGE sql STABLE AS $$
    SELECT d.endpoint, d.status, a.partner_code, d.outcome, count(*), sum(cardinality(d.event_ids)),
           min(d.attempted_at), max(d.attempted_at), d.connection, d.direction,
           coalesce(a.partner_code, gateway_reason_key(d.error), 'HTTP ' || d.status::text, d.outcome)
    FROM delivery_attempt d,
         LATERAL (SELECT CASE WHEN d.response_body ~ '^\s*\{'
                              THEN (d.response_body::jsonb ->> 'code') END AS partner_code) a
    WHERE d.outcome IN ('retry', 'failed', 'dead', 'partial', 'paused') AND d.attempted_at > since
    GROUP BY 1, 2, 3, 4, 9, 10, 11
    UNION ALL
    SELECT '(not sent)', NULL::smallint, NULL, 'refused', 0::bigint, count(*), min(e.failed_at),
           max(e.failed_at), e.connection, e.direction, gateway_reason_key(e.state_reason)
    FROM event e
    WHERE e.failed_at > since AND e.state IN ('failed', 'dead')
      AND NOT EXISTS (SELECT 1 FROM delivery_attempt d WHERE d.event_ids @> ARRAY[e.id])
    GROUP BY e.connection, e.direction, gateway_reason_key(e.state_reason)
$$;

-- As in 20261207000400, and a failed or dead event takes its failed_at.
CREATE OR REPLACE FUNCTION gateway_settle(p_owner text, p_connection text, p_direction text,
                               p_kind text, p_reason text, p_action text,
                               p_ids bigint[], p_delays float8[],
                               p_lo timestamptz, p_hi timestamptz)
RETURNS bigint
LANGUAGE sql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_sort = off
AS $$
    WITH gone AS (
        DELETE FROM outbox b
        WHERE p_kind NOT IN ('retry', 'split', 'release', 'pause')
          AND b.connection = p_connection AND b.direction = p_direction
          AND b.event_id = ANY (p_ids) AND b.lease_owner = p_owner
        RETURNING b.event_id, b.received_at, b.attempts, b.solo),
    kept AS (
        UPDATE outbox b
        SET next_attempt_at = now() + p_delays[array_position(p_ids, b.event_id)]
                                      * interval '1 millisecond',
            solo = b.solo OR p_kind = 'split',
            -- A split, a release and a pause give the attempt back: the event was not refused
            -- on its own, or not sent.
            attempts = b.attempts - (p_kind IN ('split', 'release', 'pause'))::int,
            lease_until = NULL, lease_owner = NULL
        WHERE p_kind IN ('retry', 'split', 'release', 'pause')
          AND b.connection = p_connection AND b.direction = p_direction
          AND b.event_id = ANY (p_ids) AND b.lease_owner = p_owner
        RETURNING b.event_id, b.received_at, NULL::int AS attempts, NULL::boolean AS solo),
    settled AS (
        UPDATE event e
        SET state = CASE WHEN p_kind IN ('retry', 'split', 'release', 'pause') THEN 'pending'
                         ELSE p_kind END,
            state_reason = p_reason, action = coalesce(p_action, e.action),
            attempts = coalesce(s.attempts, e.attempts), solo = coalesce(s.solo, e.solo),
            failed_at = CASE WHEN p_kind IN ('failed', 'dead') THEN now() ELSE e.failed_at END,
            updated_at = now()
        FROM (SELECT * FROM gone UNION ALL SELECT * FROM kept) s
        WHERE e.id = s.event_id AND e.received_at = s.received_at
          AND e.received_at BETWEEN p_lo AND p_hi
          AND (p_kind NOT IN ('retry', 'split', 'release', 'pause')
               OR e.state_reason IS DISTINCT FROM p_reason
               OR e.action IS DISTINCT FROM coalesce(p_action, e.action))
        RETURNING e.connection, e.direction, e.message_id, e.state),
    released AS (
        DELETE FROM message_seen m USING settled s
        WHERE s.state = 'dry_run'
          AND m.key = gateway_message_key(s.connection, s.direction, s.message_id))
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM kept)
$$;
