-- Claims without a per-user probe, and settles planned once per connection (issue 12, fifth
-- session).
--
-- Measured with `perf record -a` at 5,000 events/s while delivering (scripts/bench-load --modes
-- rate): the claim and the settle were 40 % of PostgreSQL's CPU; while ingesting alone, the
-- outbox's two indexes were 14 %.
--
-- * The claim (migration 20261207000600) ran two statements per row it looked at: a probe of
--   outbox_lane for an older event of the row's user, then the lock. But a user's events are
--   all in one queue, and the claim reads its queue in order from the oldest: the older events
--   of a row's user are the rows read before it. So the dispatcher reads the queue's head
--   (gateway_claim_scan: each row's tuple id, event id, lane and whether it is due), keeps the
--   first row of each lane it meets when that row is due (a set of lanes, in Rust), and takes
--   those (gateway_claim_take: locked by tuple id and event id, SKIP LOCKED, leased, returned
--   with their events). No probe, and no outbox_lane: one index entry fewer per event ingested.
--   A row that changed between the two statements (claimed, settled, moved) no longer has the
--   tuple id it was read with, and is not taken.
-- * gateway_settle was a LANGUAGE sql function. With SET clauses it cannot be inlined, and
--   PostgreSQL (before 18) plans every statement of such a function at every call: its four
--   CTEs over the partitioned `event` were planned once per outcome of every batch (planning
--   alone was 5 % of all CPU). As PL/pgSQL its statement is planned once per connection and
--   kept (plan_cache_mode = force_generic_plan: with day partitions the custom plans look
--   cheaper, pruned at plan time, so the plan cache would otherwise keep re-planning; the
--   generic plan prunes when it starts, by p_lo and p_hi).
--
-- Both read and write through the indexes whatever the statistics (the planner settings on
-- each function: an outbox analysed while empty looks empty however large it has grown).

DROP FUNCTION gateway_claim(text, text, text, integer, float8, boolean, boolean);
DROP INDEX outbox_lane;

-- Up to p_limit rows of a queue after event p_after, in order: what a claim chooses from.
-- Nothing when the connection is paused (but for its probe), or when a live dispatcher delivers
-- it and this one is a dry run.
CREATE FUNCTION gateway_claim_scan(p_connection text, p_direction text, p_after bigint,
                                   p_limit integer, p_probe boolean, p_dry_run boolean)
RETURNS TABLE (tid text, event_id bigint, lane bigint, due boolean)
LANGUAGE plpgsql STABLE
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_sort = off SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF (NOT p_probe AND EXISTS (
            SELECT 1 FROM connection_pause p
            WHERE p.connection = p_connection AND p.direction = p_direction))
       OR (p_dry_run AND EXISTS (
            SELECT 1 FROM dispatcher_mode m
            WHERE m.connection = p_connection AND m.mode = 'live' AND m.alive_until > now())) THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT o.ctid::text, o.event_id, o.lane,
           o.next_attempt_at <= now() AND (o.lease_until IS NULL OR o.lease_until < now())
    FROM outbox o
    WHERE o.connection = p_connection AND o.direction = p_direction AND o.event_id > p_after
    ORDER BY o.event_id
    LIMIT p_limit;
END $$;

-- Leases the rows chosen from gateway_claim_scan (tuple ids and event ids, pairwise) that are
-- still due and that no other dispatcher holds, and returns their events.
CREATE FUNCTION gateway_claim_take(p_owner text, p_tids text[], p_ids bigint[],
                                   p_lease_secs float8)
RETURNS TABLE (id bigint, received_at timestamptz, connection text, message_id text,
               user_key text, payload jsonb, request_id bigint, payload_at integer,
               payload_len integer, attempts integer, solo boolean)
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_sort = off SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    tids tid[];
    lo timestamptz;
    hi timestamptz;
BEGIN
    -- Locked only if still due; a row updated since it was read is re-checked on its newest
    -- version, whose tuple id differs: not taken.
    SELECT array_agg(t.tid), min(t.received_at), max(t.received_at) INTO tids, lo, hi
    FROM (SELECT o.ctid AS tid, o.received_at
          FROM unnest(p_tids::tid[], p_ids) AS w(tid, id)
          JOIN outbox o ON o.ctid = w.tid AND o.event_id = w.id
          WHERE o.next_attempt_at <= now() AND (o.lease_until IS NULL OR o.lease_until < now())
          FOR UPDATE OF o SKIP LOCKED) t;
    IF tids IS NULL THEN
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

-- As in 20261207000500, in PL/pgSQL: planned once per connection.
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
BEGIN
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
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM kept) INTO n;
    RETURN n;
END $$;
