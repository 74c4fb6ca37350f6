-- How much of a request's body the audit log keeps (README "HTTP API", limits): a body refused
-- before authentication, or over its size limit, is kept only as a bounded prefix. These say
-- how large it was and whether `body` is a prefix of it.
ALTER TABLE inbound_request ADD COLUMN IF NOT EXISTS body_size bigint;
ALTER TABLE inbound_request ADD COLUMN IF NOT EXISTS body_truncated boolean NOT NULL DEFAULT false;
