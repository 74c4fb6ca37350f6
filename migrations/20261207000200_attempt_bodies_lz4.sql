-- Outbound request and response bodies compressed with lz4 instead of pglz (issue 12), as the
-- inbound bodies are since 20261202000820: a bulk request's body is one jsonb of up to 1,000
-- items (about 500 KB), which pglz compresses several times slower than lz4, in the
-- dispatcher's statement that records the attempt.
--
-- Set on the parent (for the partitions created later) and on every existing partition (an
-- ALTER on a partitioned table does not reach them). New rows only.
ALTER TABLE delivery_attempt ALTER COLUMN request_body SET COMPRESSION lz4,
                             ALTER COLUMN response_body SET COMPRESSION lz4;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'delivery_attempt'::regclass LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN request_body SET COMPRESSION lz4, '
                       'ALTER COLUMN response_body SET COMPRESSION lz4', r.relname);
    END LOOP;
END $$;
