-- Raw bodies compressed with lz4 instead of pglz (issue 12): pglz_compress was the largest
-- single function in PostgreSQL's profile while ingesting (about a tenth of its CPU; `perf`
-- during `scripts/bench-load --modes ingest`), and lz4 compresses several times faster.
--
-- Set on the parent (which partitions created later copy) and on every existing partition
-- (ALTER on a partitioned table does not reach them), for `body` and for `events_body` (whose
-- migration set only the parent). New rows only: existing ones keep their compression until
-- rewritten.
ALTER TABLE inbound_request ALTER COLUMN body SET COMPRESSION lz4;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'inbound_request'::regclass LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN body SET COMPRESSION lz4, '
                       'ALTER COLUMN events_body SET COMPRESSION lz4', r.relname);
    END LOOP;
END $$;
