-- Attempts the partner answered by refusing the connection's credentials (outcome 'paused', from
-- the delivery engine of migration 20261202000300: the connection is paused, its events stay
-- pending) are failures an operator must see: `gateway audit failures`, audit_failures and the
-- page list them as rows of their own (outcome 'paused', reason the partner's code such as
-- BadApiKey, else the HTTP status). Only the outcome filter differs from 20261202000400.
--
-- Numbered after 20261202000400: a migration before it could not replace the function that
-- 20261202000400 creates (CREATE FUNCTION would then find it already there).
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
    SELECT '(not sent)', NULL::smallint, NULL, 'refused', 0::bigint, count(*), min(e.updated_at),
           max(e.updated_at), e.connection, e.direction, gateway_reason_key(e.state_reason)
    FROM event e
    WHERE e.state IN ('failed', 'dead') AND e.updated_at > since
      AND NOT EXISTS (SELECT 1 FROM delivery_attempt d WHERE d.event_ids @> ARRAY[e.id])
    GROUP BY e.connection, e.direction, gateway_reason_key(e.state_reason)
$$;
