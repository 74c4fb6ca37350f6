-- First sightings of messageIds kept as one 16-byte key (issue 12).
--
-- message_seen held (connection, direction, message_id) as text with a three-column primary
-- key: 228 bytes per event (measured), about a fifth of everything stored per event, and the
-- messageIds themselves, which a user deletion did not reach. Deduplication only asks "was this
-- (connection, direction, messageId) accepted before?", so a hash answers it: the first 128
-- bits of SHA-256 over an unambiguous spelling of the three, as a `uuid` (fixed 16 bytes, no
-- length header). Two different messages share a key with a probability of about n² / 2¹²⁹
-- (10⁻²¹ for a billion messages on one connection).

CREATE FUNCTION gateway_message_key(connection text, direction text, message_id text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(substring(sha256(convert_to(
               direction || ':' || length(connection) || ':' || connection || ':' || message_id,
               'UTF8')) FROM 1 FOR 16), 'hex')::uuid
$$;

CREATE TABLE message_seen_keyed (
    key         uuid        PRIMARY KEY,
    first_seen  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO message_seen_keyed (key, first_seen)
SELECT gateway_message_key(connection, direction, message_id), first_seen FROM message_seen
ON CONFLICT DO NOTHING;
DROP TABLE message_seen;
ALTER TABLE message_seen_keyed RENAME TO message_seen;
ALTER INDEX message_seen_keyed_pkey RENAME TO message_seen_pkey;
