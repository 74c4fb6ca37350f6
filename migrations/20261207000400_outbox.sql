-- The outbox: a narrow table of the pending events alone (issue 12).
--
-- Until now `event` was both the audit record and the queue. Every claim and every lease
-- renewal updated the event row, and every settle did again; the pending-only indexes name
-- `state`, so a settle could never be an in-place (HOT) update, and a claim was one only where
-- the page had room: each event was written into its indexes up to three times, on a table
-- that only grows. And the claim's per-user probe was planned from the statistics of the whole
-- day (a million rows, a few hundred pending): a backlog that grew faster than ANALYZE saw it
-- was probed as if it were small, which slowed the claims, which grew the backlog (the soak's
-- dispatch stalls).
--
-- Now a pending event has a row in `outbox` (its lane and its lease), written with the event
-- and deleted when the event settles. Claims, renewals and retries touch only the outbox: a
-- small table whose leases and attempts no index names (in-place updates, and half of each
-- page left free for them), and whose statistics describe the backlog itself. The event row is
-- written at ingest and updated once, when it settles (state, reason, action, attempts).
--
-- One invariant: an event has an outbox row if and only if its state is 'pending'. Inserts
-- keep it through a trigger (gateway_outbox_inserted, which runs before the privacy trigger);
-- whatever moves an event out of pending (a settle, a user deletion) deletes its row in the
-- same statement, and whatever moves one back (a replay) inserts it. A deletion that rewrites a
-- pending event's user_key moves its outbox row to the new lane.
--
-- `attempts` and `solo` (sent alone) are kept in the outbox while the event is pending and
-- copied to the event when it settles; `next_attempt_at`, `lease_until` and `lease_owner` live
-- only in the outbox (audit_event and audit_backlog read them there).

CREATE TABLE outbox (
    event_id bigint NOT NULL,
    received_at timestamptz NOT NULL,
    connection text NOT NULL,
    direction text NOT NULL,
    -- The event's user lane (gateway_lane): what the per-user order is kept by.
    lane bigint NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz,
    lease_owner text,
    solo boolean NOT NULL DEFAULT false
) WITH (
    -- A claim makes a row longer (lease_owner): room for it on the same page.
    fillfactor = 50,
    -- A queue: as many rows deleted as inserted. Vacuumed and analysed by count, not by a
    -- share of a table whose size is the backlog.
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0);
-- Claims (oldest first) and settles, renewals and retries (by id, within one connection and
-- direction, as a dispatcher holds them).
CREATE INDEX outbox_due ON outbox (connection, direction, event_id);
-- The claim's per-user probe: is an older event of this lane still pending? By the lane alone,
-- a number, so that no other index can serve the probe (see gateway_claim), and the index is
-- narrow.
CREATE INDEX outbox_lane ON outbox (lane, event_id);

-- An event's lane: its connection, direction and user_key, hashed (64 bits). Two users whose
-- lanes collided would only be delivered in one order between them, as if they were one user.
-- The outbox keeps no user_key (nothing to redact there).
CREATE FUNCTION gateway_lane(connection text, direction text, user_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended(connection || E'\n' || direction || E'\n' || user_key, 0)
$$;

INSERT INTO outbox (event_id, received_at, connection, direction, lane, attempts,
                    next_attempt_at, lease_until, lease_owner, solo)
SELECT id, received_at, connection, direction, gateway_lane(connection, direction, user_key),
       attempts, next_attempt_at, lease_until, lease_owner, solo
FROM event WHERE state = 'pending';

DROP VIEW audit_event;
DROP VIEW audit_states;
DROP VIEW audit_backlog;
DROP INDEX event_due_connection;
DROP INDEX event_user_open;
ALTER TABLE event DROP COLUMN next_attempt_at, DROP COLUMN lease_until, DROP COLUMN lease_owner;

-- As in 20261202000800, the lease and the attempts of a pending event read in the outbox.
CREATE VIEW audit_event AS
SELECT e.id AS event_id, e.received_at, e.connection, e.direction, e.message_id, e.call_type,
       e.user_key, gateway_event_state(e.state, o.lease_until) AS state, e.state_reason, e.action,
       coalesce(o.attempts, e.attempts) AS attempts, o.next_attempt_at,
       a.endpoint AS last_endpoint, a.status AS last_status, a.outcome AS last_outcome,
       a.error AS last_error, a.attempted_at AS last_attempt_at, gateway_event_payload(e) AS payload
FROM event e
LEFT JOIN outbox o ON o.connection = e.connection AND o.direction = e.direction AND o.event_id = e.id
LEFT JOIN LATERAL (
    SELECT endpoint, status, outcome, error, attempted_at FROM delivery_attempt d
    WHERE d.event_ids @> ARRAY[e.id] ORDER BY d.attempted_at DESC, d.id DESC LIMIT 1
) a ON true;

-- Event counts by state, per connection and direction.
CREATE VIEW audit_states AS
SELECT e.connection, e.direction, gateway_event_state(e.state, o.lease_until) AS state,
       count(*) AS events, max(e.updated_at) AS last_change
FROM event e
LEFT JOIN outbox o ON o.connection = e.connection AND o.direction = e.direction AND o.event_id = e.id
GROUP BY 1, 2, 3;

-- What waits for delivery, per connection and direction: the backlog and its oldest event
-- (the /metrics gauges gateway_backlog_events and gateway_oldest_pending_seconds).
CREATE VIEW audit_backlog AS
SELECT connection, direction, count(*) AS events,
       count(*) FILTER (WHERE lease_until > now()) AS in_flight,
       count(*) FILTER (WHERE next_attempt_at > now()) AS waiting_to_retry,
       min(received_at) AS oldest_received_at,
       extract(epoch FROM now() - min(received_at))::float8 AS oldest_age_secs,
       min(next_attempt_at) AS next_due_at
FROM outbox
GROUP BY connection, direction;

-- As in 20261202000910, and the outbox follows the events a deletion changes.
CREATE OR REPLACE FUNCTION gateway_redact_user(conn text, vals jsonb, deletion bigint, request_event bigint)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    hashes text[];
    ids text[];
    emails text[];
    everything text[];
    -- Any of the values, any case, raw or as JSON escapes them: the cheap test that picks the
    -- rows worth a closer look (one regular expression, no function call per row).
    pattern text;
    -- The same for bytes (inbound bodies), over encode(body, 'escape').
    byte_pattern text;
    users_events bigint[];
    blob_reqs bigint[];
    blob_ats timestamptz[];
    blob_offs integer[];
    blob_lens integer[];
    n_events bigint;
    n_requests bigint;
    n_attempts bigint;
    label text := format('user deletion %s', deletion);
BEGIN
    SELECT coalesce(array_agg(gateway_identity_hash(v ->> 'kind', v ->> 'value')), '{}'),
           coalesce(array_agg(v ->> 'value') FILTER (WHERE v ->> 'kind' <> 'email'), '{}'),
           coalesce(array_agg(v ->> 'value') FILTER (WHERE v ->> 'kind' = 'email'), '{}')
    INTO hashes, ids, emails
    FROM jsonb_array_elements(vals) v;
    everything := ids || emails;
    IF cardinality(everything) = 0 THEN
        RETURN '{}'::jsonb;
    END IF;
    SELECT string_agg(DISTINCT gateway_regex_literal(x), '|') INTO pattern
    FROM unnest(everything) v,
         LATERAL (VALUES (v), (replace(v, '/', '\/')),
                         (substr(to_json(v)::text, 2, length(to_json(v)::text) - 2))) AS t(x);
    SELECT string_agg(DISTINCT gateway_regex_literal(encode(convert_to(x, 'UTF8'), 'escape')), '|')
    INTO byte_pattern
    FROM unnest(everything) v, LATERAL (VALUES (v), (replace(v, '/', '\/'))) AS t(x);

    -- Each table: the candidate rows (the pattern), their redacted values, and an update of
    -- only the rows that change.
    -- The candidates: events whose payload may name the user (gateway_payloads_matching: one
    -- text test per request's blob), or whose user_key or reason does.
    WITH cand AS (
        SELECT m.id, m.received_at, m.payload FROM gateway_payloads_matching(conn, everything, false) m
        UNION
        SELECT e.id, e.received_at, gateway_event_payload(e) FROM event e
        WHERE e.connection = conn AND (e.user_key ~* pattern OR e.state_reason ~* pattern)),
    hit AS (
        SELECT e.id, e.received_at, u.users,
               u.users AND e.state = 'pending' AND e.id <> request_event AS stop,
               CASE WHEN u.users
                    THEN jsonb_strip_nulls(jsonb_build_object(
                         'type', c.payload -> 'type', 'messageId', c.payload -> 'messageId',
                         'redacted', label))
                    ELSE gateway_scrub_json(c.payload, ids, emails) END AS payload,
               c.payload AS before,
               e.payload IS NULL AS in_blob,
               CASE WHEN u.users THEN 'deleted:' || deletion
                    ELSE gateway_scrub_text(e.user_key, ids, emails) END AS user_key,
               gateway_scrub_text(e.state_reason, ids, emails) AS state_reason
        FROM cand c JOIN event e ON e.id = c.id AND e.received_at = c.received_at
        CROSS JOIN LATERAL (SELECT gateway_identity_hashes(c.payload) && hashes AS users) u
        WHERE (c.payload::text ~* pattern OR e.user_key ~* pattern OR e.state_reason ~* pattern)
          -- Another deletion of this user still waiting to be sent keeps its payload: it
          -- needs it, and its own answer redacts it.
          AND NOT (e.call_type = 'delete' AND e.state = 'pending')),
    changed AS (
        UPDATE event e SET
            payload = hit.payload,
            email = gateway_event_email(hit.payload),
            user_key = hit.user_key,
            -- The user's events still pending are never delivered (as at the request).
            state = CASE WHEN hit.stop THEN 'skipped' ELSE e.state END,
            state_reason = CASE WHEN hit.stop THEN format('suppressed: %s', label)
                                ELSE hit.state_reason END,
            updated_at = now()
        FROM hit
        WHERE e.id = hit.id AND e.received_at = hit.received_at
          AND (hit.users OR hit.payload IS DISTINCT FROM hit.before
               OR hit.user_key IS DISTINCT FROM e.user_key
               OR hit.state_reason IS DISTINCT FROM e.state_reason)
        RETURNING e.id, hit.users, hit.in_blob, e.request_id, e.received_at, e.payload_at, e.payload_len,
                  e.connection, e.direction, e.state, e.user_key),
    -- The outbox follows: the events skipped leave it (one under a lease too: its dispatcher's
    -- settle then finds nothing to settle), the others move to the lane of their new user_key.
    unqueued AS (
        DELETE FROM outbox o USING changed c
        WHERE c.state <> 'pending'
          AND o.connection = c.connection AND o.direction = c.direction AND o.event_id = c.id),
    rekeyed AS (
        UPDATE outbox o SET lane = gateway_lane(c.connection, c.direction, c.user_key)
        FROM changed c
        WHERE c.state = 'pending'
          AND o.connection = c.connection AND o.direction = c.direction AND o.event_id = c.id
          AND o.lane <> gateway_lane(c.connection, c.direction, c.user_key))
    SELECT count(*), coalesce(array_agg(id) FILTER (WHERE users), '{}'),
           array_agg(request_id) FILTER (WHERE in_blob), array_agg(received_at) FILTER (WHERE in_blob),
           array_agg(payload_at) FILTER (WHERE in_blob), array_agg(payload_len) FILTER (WHERE in_blob)
    INTO n_events, users_events, blob_reqs, blob_ats, blob_offs, blob_lens FROM changed;
    -- Their lines in the requests' blobs go too (their payloads, redacted, are in the rows now).
    PERFORM gateway_blank_payloads(blob_reqs, blob_ats, blob_offs, blob_lens);

    WITH hit AS (
        SELECT r.id, r.received_at,
               gateway_redact_body(r.body, hashes, ids, emails, deletion) AS body,
               gateway_scrub_text(r.error_message, ids, emails) AS error_message,
               gateway_scrub_json(r.headers, ids, emails) AS headers
        FROM inbound_request r
        WHERE (r.connection = conn OR r.connection IS NULL)
          AND (encode(r.body, 'escape') ~* byte_pattern
               -- a JSON body may spell any character as \uXXXX: looked at closely
               OR position('\x5c75'::bytea IN r.body) > 0
               OR r.error_message ~* pattern OR r.headers::text ~* pattern)),
    changed AS (
        UPDATE inbound_request r SET
            body = coalesce(hit.body, r.body),
            error_message = hit.error_message,
            headers = hit.headers
        FROM hit
        WHERE r.id = hit.id AND r.received_at = hit.received_at
          AND (hit.body IS NOT NULL OR hit.error_message IS DISTINCT FROM r.error_message
               OR hit.headers IS DISTINCT FROM r.headers)
        RETURNING 1)
    SELECT count(*) INTO n_requests FROM changed;

    WITH hit AS (
        SELECT d.id, d.attempted_at,
               gateway_redact_json(d.request_body, hashes, ids, emails, deletion) AS request_body,
               gateway_scrub_answer(d.response_body, ids, emails) AS response_body,
               gateway_scrub_text(d.error, ids, emails) AS error,
               -- A deletion by path names its user, percent-encoded, in the URL.
               CASE WHEN d.endpoint IN ('/api/users/{email}', '/api/users/byUserId/{userId}')
                         AND d.event_ids && (users_events || request_event)
                    THEN regexp_replace(d.url, '/api/users/(byUserId/)?[^/?#]*$', '/api/users/\1<redacted>')
                    ELSE gateway_scrub_text(d.url, ids, emails) END AS url
        FROM delivery_attempt d
        WHERE d.connection = conn
          AND (d.event_ids && (users_events || request_event)
               OR d.request_body::text ~* pattern OR d.response_body ~* pattern
               OR d.error ~* pattern OR d.url ~* pattern)),
    changed AS (
        UPDATE delivery_attempt d SET
            request_body = hit.request_body, response_body = hit.response_body,
            error = hit.error, url = hit.url,
            -- The window's memory of whom the request named (hashes) goes with the rest.
            user_hashes = NULL
        FROM hit
        WHERE d.id = hit.id AND d.attempted_at = hit.attempted_at
          AND (hit.request_body IS DISTINCT FROM d.request_body
               OR hit.response_body IS DISTINCT FROM d.response_body
               OR hit.error IS DISTINCT FROM d.error OR hit.url IS DISTINCT FROM d.url)
        RETURNING 1)
    SELECT count(*) INTO n_attempts FROM changed;

    UPDATE user_deletion SET iterable_answer = gateway_scrub_answer(iterable_answer, ids, emails),
                             reason = gateway_scrub_text(reason, ids, emails)
    WHERE connection = conn AND identities && hashes;

    RETURN jsonb_build_object('event', n_events, 'inbound_request', n_requests,
                              'delivery_attempt', n_attempts);
END $$;

-- As in 20261202000800, and the events it skips leave the outbox (whose rows of the new events
-- gateway_outbox_inserted wrote first: triggers on one event run in the order of their names).
CREATE OR REPLACE FUNCTION gateway_privacy_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    hashes text[];
    asked text;
    deletion bigint;
    vals text[];
    doc jsonb;
    requests bigint[] := '{}';
BEGIN
    -- What nearly every insert costs: no deletion in it, and nobody suppressed on its connections.
    IF NOT EXISTS (SELECT 1 FROM new_events WHERE call_type = 'delete')
       AND NOT EXISTS (SELECT 1 FROM user_suppression s
                       WHERE s.lifted_at IS NULL
                         AND s.connection IN (SELECT connection FROM new_events)) THEN
        RETURN NULL;
    END IF;

    FOR r IN SELECT * FROM new_events n
             WHERE n.call_type = 'delete' AND n.state = 'pending' AND n.direction = 'segment_to_iterable'
             ORDER BY n.id LOOP
        doc := gateway_event_payload(r.payload, r.request_id, r.received_at, r.payload_at, r.payload_len);
        SELECT array_agg(gateway_identity_hash(kind, value)), array_agg(value)
        INTO hashes, vals
        FROM gateway_deletion_identities(r.connection, doc);
        hashes := coalesce(hashes, '{}');
        asked := doc -> 'context' -> 'gateway' ->> 'deletion';
        -- Only an operator lifts a forget (a Segment message cannot ask for an unforget).
        IF asked = 'unforget' AND doc -> 'context' -> 'gateway' ->> 'source' IS DISTINCT FROM 'operator' THEN
            asked := NULL;
        END IF;
        -- A Segment message asking again for a user already suppressed is a repeat: it is
        -- skipped below like any event of that user. An operator's request always goes.
        CONTINUE WHEN doc -> 'context' -> 'gateway' ->> 'source' IS DISTINCT FROM 'operator'
                      AND EXISTS (SELECT 1 FROM user_suppression s
                                  WHERE s.connection = r.connection AND s.lifted_at IS NULL
                                    AND s.identity = ANY (hashes));
        INSERT INTO user_deletion (connection, identities, mode, source, route, message_id,
                                   event_id, event_received_at)
        SELECT r.connection, hashes, CASE WHEN asked IN ('delete', 'forget', 'unforget') THEN asked END,
               CASE WHEN doc -> 'context' -> 'gateway' ->> 'source' = 'operator'
                    THEN 'operator' ELSE 'segment' END,
               (SELECT route FROM inbound_request q WHERE q.id = r.request_id LIMIT 1),
               r.message_id, r.id, r.received_at
        RETURNING id INTO deletion;
        requests := requests || r.id;
        CONTINUE WHEN asked = 'unforget';
        INSERT INTO user_suppression (connection, identity, deletion_id)
        SELECT r.connection, h, deletion FROM unnest(hashes) h
        ON CONFLICT (connection, identity) WHERE lifted_at IS NULL DO NOTHING;
        -- The user's pending events are never delivered (one under a live lease is being
        -- sent now: it finishes, and the deletion, behind it in the user's order, follows).
        WITH skipped AS (
            UPDATE event e SET state = 'skipped', updated_at = now(),
                               state_reason = format('suppressed: user deletion %s asked before it was delivered', deletion)
            FROM gateway_payloads_matching(r.connection, vals, true) m
            WHERE e.id = m.id AND e.received_at = m.received_at
              AND e.connection = r.connection AND e.state = 'pending' AND e.id <> r.id
              AND NOT EXISTS (SELECT 1 FROM outbox o
                              WHERE o.connection = e.connection AND o.direction = e.direction
                                AND o.event_id = e.id AND o.lease_until >= now())
              AND e.call_type IS DISTINCT FROM 'delete'
              -- A text test first (cheap, per request), the hashes of what it lets through.
              AND gateway_identity_hashes(m.payload) && hashes
            RETURNING e.id, e.connection, e.direction)
        DELETE FROM outbox o USING skipped s
        WHERE o.connection = s.connection AND o.direction = s.direction AND o.event_id = s.id;
    END LOOP;

    -- Events of suppressed users (the deletion requests just opened excepted). Set-based, with
    -- the identity expressions written out (inlined, not a function call per row): once a
    -- connection has a suppression, every insert on it takes this path.
    FOR r IN WITH n AS (
                 SELECT n.id, n.connection, n.received_at, n.request_id, n.payload_at, n.payload_len,
                        n.payload IS NULL AS in_blob,
                        gateway_event_payload(n.payload, n.request_id, n.received_at,
                                              n.payload_at, n.payload_len) AS payload
                 FROM new_events n
                 WHERE n.connection IN (SELECT s.connection FROM user_suppression s
                                        WHERE s.lifted_at IS NULL)),
             ident AS (
                 SELECT n.id, n.connection, gateway_identity_hash(t.k, t.v) AS h
                 FROM n
                 CROSS JOIN LATERAL (VALUES
                     ('userId', n.payload ->> 'userId'),
                     ('anonymousId', n.payload ->> 'anonymousId'),
                     ('email', lower(btrim(n.payload ->> 'email'))),
                     ('email', lower(btrim(n.payload -> 'traits' ->> 'email'))),
                     ('email', lower(btrim(n.payload -> 'context' -> 'traits' ->> 'email'))),
                     ('email', lower(btrim(n.payload -> 'properties' ->> 'email')))) AS t(k, v)
                 WHERE btrim(t.v) <> '' AND jsonb_typeof(n.payload) = 'object'),
             hit AS (
                 SELECT ident.id, min(s.deletion_id) AS deletion_id
                 FROM ident JOIN user_suppression s
                   ON s.connection = ident.connection AND s.identity = ident.h AND s.lifted_at IS NULL
                 GROUP BY ident.id)
             SELECT n.id, n.received_at, n.request_id, n.payload, n.in_blob, n.payload_at,
                    n.payload_len, hit.deletion_id
             FROM hit JOIN n ON n.id = hit.id
             WHERE NOT n.id = ANY (requests) LOOP
        WITH skipped AS (
        UPDATE event e SET
            state = 'skipped',
            state_reason = format('suppressed: user deletion %s (gateway unforget lifts it)', r.deletion_id),
            payload = jsonb_strip_nulls(jsonb_build_object(
                'type', r.payload -> 'type', 'messageId', r.payload -> 'messageId',
                'redacted', format('user deletion %s', r.deletion_id))),
            email = NULL,
            user_key = 'deleted:' || r.deletion_id,
            updated_at = now()
        WHERE e.id = r.id AND e.received_at = r.received_at
        RETURNING e.id, e.connection, e.direction)
        DELETE FROM outbox o USING skipped s
        WHERE o.connection = s.connection AND o.direction = s.direction AND o.event_id = s.id;
        IF r.in_blob THEN
            PERFORM gateway_blank_payloads(ARRAY[r.request_id], ARRAY[r.received_at],
                                           ARRAY[r.payload_at], ARRAY[r.payload_len]);
        END IF;
        UPDATE inbound_request q SET body = coalesce(gateway_redact_body(
                q.body, gateway_identity_hashes(r.payload),
                ARRAY(SELECT value FROM gateway_identity_values(r.payload) WHERE kind <> 'email'),
                ARRAY(SELECT value FROM gateway_identity_values(r.payload) WHERE kind = 'email'),
                r.deletion_id), q.body)
        WHERE q.id = r.request_id;
    END LOOP;
    RETURN NULL;
END $$;

-- Every pending event inserted, whoever inserts it (the ingest's group commit, an operator's
-- deletion request, a test), enters the outbox in the same statement.
CREATE FUNCTION gateway_outbox_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (event_id, received_at, connection, direction, lane, attempts, solo)
    SELECT n.id, n.received_at, n.connection, n.direction,
           gateway_lane(n.connection, n.direction, n.user_key), n.attempts, n.solo
    FROM new_events n WHERE n.state = 'pending';
    RETURN NULL;
END $$;

CREATE TRIGGER gateway_outbox_inserted AFTER INSERT ON event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_outbox_inserted();

-- Retention (as in 20261202000200): the outbox rows of the days dropped go with them.
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
    DELETE FROM outbox WHERE received_at < before_day;
    DELETE FROM message_seen WHERE first_seen < before_day;
    RETURN n;
END $$;

-- Claims and settles, as functions that plan their statements with index scans and nested
-- loops only. The outbox's statistics trail its size (it can go from a few hundred rows to a
-- hundred thousand between two ANALYZEs, in an outage or at start-up, when it has none):
-- planned for a few rows, the claim's per-user probe became a hash anti-join over the whole
-- outbox and a sort of it (measured: 90 ms at 49,000 pending, and seconds as the backlog grew,
-- which grows it faster). Through the indexes, a claim reads the due rows in order and probes
-- each one's user once, whatever the statistics say: its cost follows the batch, not the
-- backlog.

-- Claims up to p_limit due events of one queue for p_owner (see store::claim): pending and
-- due, not under a live lease, the oldest open event of their user, their connection not
-- paused (unless this is its probe) and, for a dry-run dispatcher, not delivered live.
CREATE FUNCTION gateway_claim(p_connection text, p_direction text, p_owner text,
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
    due bigint[];
    lo timestamptz;
    hi timestamptz;
BEGIN
    SELECT array_agg(d.event_id), min(d.received_at), max(d.received_at) INTO due, lo, hi
    FROM (SELECT o.event_id, o.received_at FROM outbox o
          WHERE o.connection = p_connection AND o.direction = p_direction
            AND o.next_attempt_at <= now()
            AND (o.lease_until IS NULL OR o.lease_until < now())
            -- (By the lane alone: outbox_due, whose columns the lane does not name, cannot
            -- serve this probe; the statistics once had it chosen, scanning the whole queue for
            -- each row: 11 s for a claim of 1,000 at 18,000 pending.)
            AND NOT EXISTS (
                SELECT 1 FROM outbox older
                WHERE older.lane = o.lane AND older.event_id < o.event_id)
            AND (p_probe OR NOT EXISTS (
                SELECT 1 FROM connection_pause p
                WHERE p.connection = p_connection AND p.direction = p_direction))
            AND (NOT p_dry_run OR NOT EXISTS (
                SELECT 1 FROM dispatcher_mode m
                WHERE m.connection = p_connection AND m.mode = 'live' AND m.alive_until > now()))
          ORDER BY o.event_id
          LIMIT p_limit
          FOR UPDATE OF o SKIP LOCKED) d;
    IF due IS NULL THEN
        RETURN;
    END IF;
    -- The event rows by their keys, within the days of the batch (one partition, mostly).
    RETURN QUERY
    WITH claimed AS (
        UPDATE outbox o
        SET lease_until = now() + make_interval(secs => p_lease_secs),
            lease_owner = p_owner, attempts = o.attempts + 1
        FROM event e
        WHERE o.connection = p_connection AND o.direction = p_direction AND o.event_id = ANY (due)
          AND e.id = o.event_id AND e.received_at = o.received_at
          AND e.received_at BETWEEN lo AND hi
        RETURNING e.id, e.received_at, e.connection, e.message_id, e.user_key, e.payload,
                  e.request_id, e.payload_at, e.payload_len, o.attempts, o.solo)
    SELECT * FROM claimed;
END $$;

-- Settles events of one queue still leased by p_owner (see store::settle), all with one
-- outcome: p_kind (delivered, failed, dead, skipped, dry_run, or back to pending: retry, split,
-- release, pause), its reason and action; each event (p_ids) with its own delay (p_delays, ms,
-- back to pending). Settled for good, they leave the outbox and their event rows take the
-- outcome, with the attempts and `solo` kept in the outbox; back to pending, they stay in the
-- outbox, due after their delay, their event rows changed only if the reason or action is. A
-- dry_run gives its messageId back. p_lo and p_hi bound the events' received_at. Returns how
-- many it settled either way.
--
-- One outcome per call, and the rows found by `= ANY` rather than by a join to a list of
-- outcomes: with the outbox's statistics off, such a join was planned as a loop over the list
-- for each row (999,000 comparisons, 830 ms for 999 events).
CREATE FUNCTION gateway_settle(p_owner text, p_connection text, p_direction text,
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
