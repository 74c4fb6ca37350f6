-- The dispatch engine (issue 9): the dry_run state, rate limits shared by every gateway process,
-- connection pauses, and which processes deliver which connection in which mode.
--
-- event.state 'dry_run'        what dry-run mode "delivered": never counted as delivered
-- delivery_attempt 'paused'    a request refused for the whole connection (bad API key)
-- delivery_attempt 'released'  a request not sent: its events went back to pending unharmed
-- rate_bucket                  one token bucket per (connection, endpoint), for all processes
-- connection_pause             connections whose partner refuses their key; events stay pending
-- dispatcher_mode              live/dry-run dispatchers per connection, with a heartbeat

ALTER TABLE event DROP CONSTRAINT event_state_check;
ALTER TABLE event ADD CONSTRAINT event_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'skipped', 'dead', 'dry_run'));

ALTER TABLE delivery_attempt DROP CONSTRAINT delivery_attempt_outcome_check;
ALTER TABLE delivery_attempt ADD CONSTRAINT delivery_attempt_outcome_check
    CHECK (outcome IN ('delivered', 'partial', 'retry', 'failed', 'dead', 'dry_run', 'paused', 'released'));

-- Each dispatcher claims the events of one connection: without this index a claim walks over
-- every other connection's backlog in event_due.
CREATE INDEX event_due_connection ON event (connection, direction, id) WHERE state = 'pending';

-- A token bucket per (connection, endpoint): `tokens` refill at `rate` per second up to one
-- second's worth (at least 1). `rate` is `ceiling` (the configured limit) until the partner
-- answers 429; then it is halved (at most once a second) and grows back linearly.
CREATE TABLE rate_bucket (
    connection   text             NOT NULL,
    endpoint     text             NOT NULL,
    ceiling      double precision NOT NULL,
    rate         double precision NOT NULL,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz      NOT NULL DEFAULT clock_timestamp(),
    last_cut_at  timestamptz,
    cuts         bigint           NOT NULL DEFAULT 0,
    PRIMARY KEY (connection, endpoint)
);

-- Takes up to `want` tokens; returns how many it granted, the seconds until the next token
-- when it granted fewer, and the bucket's current rate. The row lock serialises every process.
CREATE FUNCTION gateway_take_tokens(p_connection text, p_endpoint text, p_ceiling double precision,
                                    p_want integer, p_burst_secs double precision,
                                    p_recover_per_sec double precision,
                                    OUT granted integer, OUT wait_secs double precision,
                                    OUT rate double precision)
LANGUAGE plpgsql AS $$
DECLARE
    b rate_bucket;
    t timestamptz := clock_timestamp();
    secs double precision;
    tok double precision;
BEGIN
    SELECT * INTO b FROM rate_bucket WHERE connection = p_connection AND endpoint = p_endpoint FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO rate_bucket (connection, endpoint, ceiling, rate, tokens, refilled_at)
        VALUES (p_connection, p_endpoint, p_ceiling, p_ceiling, greatest(1, p_ceiling * p_burst_secs), t)
        ON CONFLICT DO NOTHING;
        SELECT * INTO b FROM rate_bucket WHERE connection = p_connection AND endpoint = p_endpoint FOR UPDATE;
    END IF;
    secs := greatest(0, extract(epoch FROM t - b.refilled_at));
    rate := least(p_ceiling, b.rate + p_ceiling * p_recover_per_sec * secs);
    tok := least(greatest(1, rate * p_burst_secs), b.tokens + rate * secs);
    granted := greatest(0, least(p_want, floor(tok)::integer));
    tok := tok - granted;
    wait_secs := CASE WHEN granted < p_want THEN greatest(0.001, (1 - tok) / rate) ELSE 0 END;
    UPDATE rate_bucket SET ceiling = p_ceiling, rate = gateway_take_tokens.rate, tokens = tok, refilled_at = t
    WHERE connection = p_connection AND endpoint = p_endpoint;
END $$;

-- A 429: halves the rate (not below `floor_share` of the ceiling) and empties the bucket, at
-- most once a second, so that the answers to one burst cut it once. Returns the new rate, or
-- NULL when it was cut less than a second ago.
CREATE FUNCTION gateway_cut_rate(p_connection text, p_endpoint text, p_floor_share double precision)
RETURNS double precision
LANGUAGE sql AS $$
    UPDATE rate_bucket
    SET rate = greatest(ceiling * p_floor_share, rate * 0.5), tokens = least(tokens, 0),
        last_cut_at = clock_timestamp(), cuts = cuts + 1
    WHERE connection = p_connection AND endpoint = p_endpoint
      AND (last_cut_at IS NULL OR last_cut_at < clock_timestamp() - interval '1 second')
    RETURNING rate
$$;

-- A connection whose partner refused its credentials: its events stay pending and no
-- dispatcher claims them until `probe_at`, when one dispatcher sends one request to find out
-- whether the key works again.
CREATE TABLE connection_pause (
    connection  text        NOT NULL,
    direction   text        NOT NULL CHECK (direction IN ('segment_to_iterable', 'iterable_to_segment')),
    reason      text        NOT NULL,        -- unauthorized (401) or forbidden (403)
    detail      text,                        -- the partner's answer, as the attempt log has it
    paused_at   timestamptz NOT NULL DEFAULT now(),
    probe_at    timestamptz NOT NULL,
    refusals    integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (connection, direction)
);

-- Which dispatchers run for which connection in which mode (refreshed while they run): a
-- dry-run dispatcher claims nothing of a connection that a live one delivers.
CREATE TABLE dispatcher_mode (
    owner        text        NOT NULL,
    connection   text        NOT NULL,
    mode         text        NOT NULL CHECK (mode IN ('live', 'dry-run')),
    alive_until  timestamptz NOT NULL,
    PRIMARY KEY (connection, owner)
);
