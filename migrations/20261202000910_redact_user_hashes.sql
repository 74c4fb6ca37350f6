-- A user deletion clears delivery_attempt.user_hashes (migration 20261202000900) of the
-- attempts it redacts: the hashes are unkeyed, so a known email could be matched against them.
-- gateway_redact_user as in 20261202000800, with that one column added to its update of
-- delivery_attempt.

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
