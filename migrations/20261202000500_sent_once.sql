-- Requests sent at most once per window (issue 11: push and browser token registrations).
--
-- The mapping gives such a request a key (Destination::once_key: a UUID v5 of endpoint, user,
-- token, platform, application; no personal data in clear). The dispatcher skips a request
-- whose key was sent for the connection within the window, and records the key when it was.
CREATE TABLE IF NOT EXISTS sent_once (
    connection  text        NOT NULL,
    key         text        NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection, key)
);
