-- Each event's bytes stored once (issue 12).
--
-- Before: an accepted request was written as its raw body (inbound_request.body, compressed by
-- TOAST) and again as one `jsonb` payload per event (event.payload, about 600 bytes, below
-- TOAST's 2 KB threshold so never compressed), and every claim and settle of an event rewrote
-- a row carrying that payload (measured: 1,870 bytes per event in `event`, 4.6 × the event's JSON
-- across all tables).
--
-- Now the events of a request, as normalised at ingest, are one blob beside its raw body:
-- inbound_request.events_body, JSON lines in the order of the events, compressed by TOAST as a
-- whole (a batch of similar events compresses about 10 ×). An event row keeps only where its
-- line is (payload_at: byte offset, payload_len: bytes), so the rows that claims and settles
-- rewrite are narrow. event.payload is kept for rows written otherwise (the operator's deletion
-- requests, rows from before this migration) and for redacted payloads, and wins when set:
-- gateway_event_payload() reads an event's payload either way.
--
-- A redacted event gets its redacted payload in event.payload, and its line in the blob is
-- overwritten with spaces (gateway_blank_payloads), so the offsets of the others hold.

ALTER TABLE inbound_request ADD COLUMN events_body bytea;
-- lz4: compresses a 50 KB batch several times faster than the default pglz (PostgreSQL ≥ 14,
-- built with lz4, as Debian's and the managed services' are).
ALTER TABLE inbound_request ALTER COLUMN events_body SET COMPRESSION lz4;

ALTER TABLE event ALTER COLUMN payload DROP NOT NULL;
ALTER TABLE event ADD COLUMN payload_at integer;
ALTER TABLE event ADD COLUMN payload_len integer;
-- The email the event is about (gateway_event_email of its payload), for `gateway audit user`,
-- replays by user and the page's search: written at ingest, so no index reads payloads.
ALTER TABLE event ADD COLUMN email text;
ALTER TABLE event ADD CONSTRAINT event_payload_somewhere
    CHECK (payload IS NOT NULL OR (payload_at IS NOT NULL AND payload_len IS NOT NULL));

UPDATE event SET email = gateway_event_email(payload) WHERE gateway_event_email(payload) IS NOT NULL;
DROP INDEX event_email;
CREATE INDEX event_email ON event (email) WHERE email IS NOT NULL;
-- Claims are per connection (event_due_connection); nothing reads event_due any more.
DROP INDEX event_due;

-- An event's payload, wherever it is kept.
CREATE FUNCTION gateway_event_payload(own jsonb, request_id bigint, received_at timestamptz,
                                      at integer, len integer) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(own, (
        SELECT convert_from(substring(q.events_body FROM at + 1 FOR len), 'UTF8')::jsonb
        FROM inbound_request q
        WHERE q.id = request_id AND q.received_at = gateway_event_payload.received_at))
$$;

CREATE FUNCTION gateway_event_payload(e event) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT gateway_event_payload(e.payload, e.request_id, e.received_at, e.payload_at, e.payload_len)
$$;

-- The events of a connection whose payload may name one of `vals` (as written, with '/'
-- escaped, or JSON-escaped; any case), with their payloads: a text test over each request's
-- blob (one decompression per request), the lines of the requests it lets through, and the
-- payloads kept in event.payload. `pending_only`: only events still pending.
CREATE FUNCTION gateway_payloads_matching(conn text, vals text[], pending_only boolean)
RETURNS TABLE (id bigint, received_at timestamptz, payload jsonb)
LANGUAGE sql STABLE AS $$
    WITH pat AS (
        SELECT string_agg(DISTINCT gateway_regex_literal(x), '|') AS p
        FROM unnest(vals) v,
             LATERAL (VALUES (v), (replace(v, '/', '\/')),
                             (substr(to_json(v)::text, 2, length(to_json(v)::text) - 2))) AS t(x)
        WHERE v IS NOT NULL AND v <> ''),
    requests AS (
        SELECT q.id, q.received_at, q.events_body
        FROM inbound_request q, pat
        WHERE q.connection = conn AND q.events_body IS NOT NULL
          AND (NOT pending_only OR (q.id, q.received_at) IN (
                   SELECT o.request_id, o.received_at FROM event o
                   WHERE o.connection = conn AND o.state = 'pending'))
          AND (convert_from(q.events_body, 'UTF8') ~* pat.p
               -- any character may be spelled \uXXXX: looked at closely
               OR strpos(convert_from(q.events_body, 'UTF8'), '\u') > 0))
    SELECT e.id, e.received_at, e.payload
    FROM event e, pat
    WHERE e.connection = conn AND e.payload IS NOT NULL AND e.payload::text ~* pat.p
      AND (NOT pending_only OR e.state = 'pending')
    UNION ALL
    SELECT e.id, e.received_at,
           convert_from(substring(r.events_body FROM e.payload_at + 1 FOR e.payload_len), 'UTF8')::jsonb
    FROM requests r JOIN event e ON e.request_id = r.id AND e.received_at = r.received_at
    WHERE e.connection = conn AND e.payload IS NULL
      AND (NOT pending_only OR e.state = 'pending')
$$;

-- Overwrites the lines of the given events in their requests' blobs with spaces (their
-- payloads, redacted, are in event.payload now). One read and one write per request.
CREATE FUNCTION gateway_blank_payloads(reqs bigint[], ats timestamptz[], offs integer[], lens integer[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    b bytea;
BEGIN
    FOR r IN SELECT t.q, t.a, array_agg(t.o) AS os, array_agg(t.l) AS ls
             FROM unnest(reqs, ats, offs, lens) AS t(q, a, o, l)
             WHERE t.o IS NOT NULL AND t.l IS NOT NULL
             GROUP BY t.q, t.a LOOP
        SELECT events_body INTO b FROM inbound_request WHERE id = r.q AND received_at = r.a;
        CONTINUE WHEN b IS NULL;
        FOR i IN 1 .. cardinality(r.os) LOOP
            b := overlay(b PLACING convert_to(repeat(' ', r.ls[i]), 'UTF8') FROM r.os[i] + 1 FOR r.ls[i]);
        END LOOP;
        UPDATE inbound_request SET events_body = b WHERE id = r.q AND received_at = r.a;
    END LOOP;
END $$;

CREATE OR REPLACE VIEW audit_event AS
SELECT e.id AS event_id, e.received_at, e.connection, e.direction, e.message_id, e.call_type,
       e.user_key, gateway_event_state(e.state, e.lease_until) AS state, e.state_reason, e.action, e.attempts, e.next_attempt_at,
       a.endpoint AS last_endpoint, a.status AS last_status, a.outcome AS last_outcome,
       a.error AS last_error, a.attempted_at AS last_attempt_at, gateway_event_payload(e) AS payload
FROM event e
LEFT JOIN LATERAL (
    SELECT endpoint, status, outcome, error, attempted_at FROM delivery_attempt d
    WHERE d.event_ids @> ARRAY[e.id] ORDER BY d.attempted_at DESC, d.id DESC LIMIT 1
) a ON true;

-- The identities of a deletion request: those its message carries, and the emails and
-- anonymousIds that the user's own events (same userId, found by the event_user index)
-- carried, so that a deletion by userId reaches the email too.
CREATE OR REPLACE FUNCTION gateway_deletion_identities(conn text, p jsonb)
RETURNS TABLE (kind text, value text) LANGUAGE sql STABLE AS $$
    SELECT i.kind, i.value FROM gateway_identity_values(p) i
    UNION
    SELECT i.kind, i.value
    FROM event e
    CROSS JOIN LATERAL gateway_identity_values(
        gateway_event_payload(e.payload, e.request_id, e.received_at, e.payload_at, e.payload_len)) i
    WHERE p ->> 'userId' IS NOT NULL AND p ->> 'userId' <> ''
      AND e.user_key = 'u:' || (p ->> 'userId') AND e.connection = conn
      AND i.kind IN ('email', 'anonymousId')
$$;

-- Redacts every trace of a user on a connection from the audit log: the events that are the
-- user's (payload, user_key; any still pending is skipped), other events that name the user,
-- the inbound bodies (only the user's items of a batch), the outbound requests (only the
-- user's items of a bulk body; URLs, answers, errors). `vals`: [{"kind", "value"}] in clear,
-- from the deletion request (they exist only in this call). Returns rows changed per table.
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
            lease_until = CASE WHEN hit.stop THEN NULL ELSE e.lease_until END,
            updated_at = now()
        FROM hit
        WHERE e.id = hit.id AND e.received_at = hit.received_at
          AND (hit.users OR hit.payload IS DISTINCT FROM hit.before
               OR hit.user_key IS DISTINCT FROM e.user_key
               OR hit.state_reason IS DISTINCT FROM e.state_reason)
        RETURNING e.id, hit.users, hit.in_blob, e.request_id, e.received_at, e.payload_at, e.payload_len)
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
            error = hit.error, url = hit.url
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

-- New events: deletion requests open a tombstone and a suppression and skip the user's
-- pending events; events of suppressed users are skipped and redacted on arrival.
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
        UPDATE event e SET state = 'skipped', updated_at = now(),
                           state_reason = format('suppressed: user deletion %s asked before it was delivered', deletion)
        FROM gateway_payloads_matching(r.connection, vals, true) m
        WHERE e.id = m.id AND e.received_at = m.received_at
          AND e.connection = r.connection AND e.state = 'pending' AND e.id <> r.id
          AND (e.lease_until IS NULL OR e.lease_until < now())
          AND e.call_type IS DISTINCT FROM 'delete'
          -- A text test first (cheap, per request), the hashes of what it lets through.
          AND gateway_identity_hashes(m.payload) && hashes;
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
        UPDATE event e SET
            state = 'skipped',
            state_reason = format('suppressed: user deletion %s (gateway unforget lifts it)', r.deletion_id),
            payload = jsonb_strip_nulls(jsonb_build_object(
                'type', r.payload -> 'type', 'messageId', r.payload -> 'messageId',
                'redacted', format('user deletion %s', r.deletion_id))),
            email = NULL,
            user_key = 'deleted:' || r.deletion_id,
            lease_until = NULL, updated_at = now()
        WHERE e.id = r.id AND e.received_at = r.received_at;
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

DROP TRIGGER IF EXISTS gateway_privacy_inserted ON event;
CREATE TRIGGER gateway_privacy_inserted AFTER INSERT ON event
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_privacy_inserted();

-- A deletion request's event settled: keep Iterable's answer, redact the user everywhere.
CREATE OR REPLACE FUNCTION gateway_privacy_settled() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    d user_deletion;
    a record;
    vals jsonb;
    counts jsonb := '{}'::jsonb;
    asked text;
BEGIN
    SELECT * INTO d FROM user_deletion
    WHERE event_id = NEW.id AND event_received_at = NEW.received_at AND completed_at IS NULL
    ORDER BY id LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT endpoint, status, response_body INTO a FROM delivery_attempt
    WHERE event_ids @> ARRAY[NEW.id] ORDER BY attempted_at DESC, id DESC LIMIT 1;
    asked := coalesce(d.mode, CASE a.endpoint WHEN '/api/users/forget' THEN 'forget'
                                             WHEN '/api/users/unforget' THEN 'unforget'
                                             WHEN '/api/users/{email}' THEN 'delete'
                                             WHEN '/api/users/byUserId/{userId}' THEN 'delete' END);
    UPDATE user_deletion SET
        completed_at = now(), outcome = NEW.state, mode = asked, reason = NEW.state_reason,
        iterable_endpoint = a.endpoint, iterable_status = a.status, iterable_answer = a.response_body,
        iterable_code = gateway_try_jsonb(a.response_body) ->> 'code'
    WHERE id = d.id;
    -- An unforget is not a deletion: nothing to redact (the user may be collected again).
    IF asked IS DISTINCT FROM 'unforget' THEN
        -- The request's identities, and those that share an event with one of them (the
        -- userId of an event that had the email, ...): one hop, over the connection's events.
        WITH own AS (SELECT kind, value FROM gateway_deletion_identities(NEW.connection, gateway_event_payload(
                         NEW.payload, NEW.request_id, NEW.received_at, NEW.payload_at, NEW.payload_len))),
        own_hashes AS (SELECT array_agg(gateway_identity_hash(kind, value)) AS h FROM own),
        linked AS (
            SELECT kind, value FROM own
            UNION
            SELECT i.kind, i.value
            FROM gateway_payloads_matching(NEW.connection, ARRAY(SELECT value FROM own), false) e
            CROSS JOIN own_hashes o
            CROSS JOIN LATERAL gateway_own_identity_values(e.payload) i
            WHERE e.id <> NEW.id
              AND ARRAY(SELECT gateway_identity_hash(x.kind, x.value)
                        FROM gateway_own_identity_values(e.payload) x) && o.h)
        SELECT coalesce(jsonb_agg(jsonb_build_object('kind', kind, 'value', value)), '[]')
        INTO vals FROM linked;
        UPDATE user_deletion SET identities = ARRAY(
            SELECT DISTINCT h FROM unnest(identities || ARRAY(
                SELECT gateway_identity_hash(v ->> 'kind', v ->> 'value')
                FROM jsonb_array_elements(vals) v)) h)
        WHERE id = d.id;
        INSERT INTO user_suppression (connection, identity, deletion_id)
        SELECT NEW.connection, gateway_identity_hash(v ->> 'kind', v ->> 'value'), d.id
        FROM jsonb_array_elements(vals) v
        ON CONFLICT (connection, identity) WHERE lifted_at IS NULL DO NOTHING;
        counts := gateway_redact_user(NEW.connection, vals, d.id, NEW.id);
    END IF;
    UPDATE user_deletion SET redacted = counts WHERE id = d.id;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS gateway_privacy_settled ON event;
CREATE TRIGGER gateway_privacy_settled AFTER UPDATE OF state ON event
    FOR EACH ROW
    WHEN (OLD.state = 'pending' AND NEW.state <> 'pending' AND NEW.call_type = 'delete')
    EXECUTE FUNCTION gateway_privacy_settled();

