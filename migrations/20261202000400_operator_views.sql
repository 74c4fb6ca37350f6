-- Operating the gateway (issue 10): replays, and the views behind `gateway audit` and /ui.
--
-- replay        one row per `gateway replay` run: who, when, with which filter, how many events
-- replay_event  each event a replay took, with the state, reason and attempts it had before
--               (its earlier attempts stay in delivery_attempt; the replay starts a generation)

CREATE TABLE replay (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    requested_by  text        NOT NULL,        -- operating-system user @ host
    filter        jsonb       NOT NULL,        -- the command's filters, as given
    events        integer     NOT NULL,
    note          text
);

CREATE TABLE replay_event (
    replay_id          bigint      NOT NULL REFERENCES replay (id),
    event_id           bigint      NOT NULL,
    event_received_at  timestamptz NOT NULL,
    previous_state     text        NOT NULL,
    previous_reason    text,
    previous_attempts  integer     NOT NULL,
    PRIMARY KEY (replay_id, event_id)
);
CREATE INDEX replay_event_event ON replay_event (event_id);

-- The email an event is about, wherever its kind keeps it (Segment identify traits, a track's
-- context traits or properties, an Iterable webhook's top-level email).
CREATE FUNCTION gateway_event_email(payload jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower(coalesce(payload ->> 'email', payload -> 'traits' ->> 'email',
                          payload -> 'context' -> 'traits' ->> 'email',
                          payload -> 'properties' ->> 'email'))
$$;

-- The user keys a search term can be: ingest keys events u:<userId>, a:<anonymousId> or
-- e:<email> (and the raw term, for keys written otherwise).
CREATE FUNCTION gateway_user_keys(term text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY['u:' || term, 'a:' || term, 'e:' || term, 'e:' || lower(term), term]
$$;

-- `gateway audit user` and the page's search by email.
CREATE INDEX event_email ON event (gateway_event_email(payload));
-- Failures by reason over a time window: only failed and dead events enter it.
CREATE INDEX event_settled_bad ON event (updated_at) WHERE state IN ('failed', 'dead');

-- A failure reason as a short key: the partner's or the mapping's code when the text ends with
-- one in parentheses (`updateUser: email or userId is required (PAYLOAD_VALIDATION_FAILED)`),
-- else its first 80 characters.
CREATE FUNCTION gateway_reason_key(reason text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(substring(reason from '\(([A-Z][A-Z0-9_]+)\)\s*$'), left(reason, 80))
$$;

-- Failures since a time, by connection, direction, endpoint and reason: the attempts the partner
-- refused (retried or not), and the events refused before anything was sent (a mapping error
-- such as PAYLOAD_VALIDATION_FAILED: endpoint '(not sent)', outcome 'refused'). `gateway audit
-- failures --since 1h` calls it; the view below is its last 7 days.
CREATE FUNCTION gateway_failures(since timestamptz)
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
    WHERE d.outcome IN ('retry', 'failed', 'dead', 'partial') AND d.attempted_at > since
    GROUP BY 1, 2, 3, 4, 9, 10, 11
    UNION ALL
    SELECT '(not sent)', NULL::smallint, NULL, 'refused', 0::bigint, count(*), min(e.updated_at),
           max(e.updated_at), e.connection, e.direction, gateway_reason_key(e.state_reason)
    FROM event e
    WHERE e.state IN ('failed', 'dead') AND e.updated_at > since
      AND NOT EXISTS (SELECT 1 FROM delivery_attempt d WHERE d.event_ids @> ARRAY[e.id])
    GROUP BY e.connection, e.direction, gateway_reason_key(e.state_reason)
$$;

-- The first eight columns are the view's earlier ones, in their order.
CREATE OR REPLACE VIEW audit_failures AS
SELECT * FROM gateway_failures(now() - interval '7 days');

-- Which replay generation an attempt at `at` of an event belongs to: how many replays of the
-- event came before it.
CREATE FUNCTION gateway_replay_generation(event_id bigint, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT count(*) FROM replay_event r JOIN replay p ON p.id = r.replay_id
    WHERE r.event_id = $1 AND p.requested_at <= $2
$$;

-- Every outbound attempt per event, now with the direction and the replay generation it belongs
-- to (0: before any replay; n: after the n-th replay of that event).
CREATE OR REPLACE VIEW audit_attempt AS
SELECT e.message_id, e.user_key, e.connection, d.attempted_at, d.endpoint, d.url, d.attempt,
       d.dry_run, d.status, d.outcome, d.error, d.duration_ms, d.request_body, d.response_body,
       e.id AS event_id, d.id AS attempt_id,
       e.direction, gateway_replay_generation(e.id, d.attempted_at) AS generation
FROM delivery_attempt d
JOIN event e ON e.id = ANY (d.event_ids);

-- What waits for delivery, per connection and direction: the backlog and its oldest event
-- (the /metrics gauges gateway_backlog_events and gateway_oldest_pending_seconds).
CREATE VIEW audit_backlog AS
SELECT connection, direction, count(*) AS events,
       count(*) FILTER (WHERE lease_until > now()) AS in_flight,
       count(*) FILTER (WHERE next_attempt_at > now()) AS waiting_to_retry,
       min(received_at) AS oldest_received_at,
       extract(epoch FROM now() - min(received_at))::float8 AS oldest_age_secs,
       min(next_attempt_at) AS next_due_at
FROM event WHERE state = 'pending'
GROUP BY connection, direction;

-- Replays, newest first.
CREATE VIEW audit_replays AS
SELECT p.id, p.requested_at, p.requested_by, p.filter, p.events, p.note,
       (SELECT count(*) FROM replay_event r JOIN event e ON e.id = r.event_id
                                               AND e.received_at = r.event_received_at
        WHERE r.replay_id = p.id AND e.state = 'pending') AS still_pending
FROM replay p ORDER BY p.id DESC;
