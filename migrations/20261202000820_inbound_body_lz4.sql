-- Raw bodies compressed with lz4 instead of pglz (issue 12): pglz_compress was the largest
-- single function in PostgreSQL's profile while ingesting (about a tenth of its CPU; `perf`
-- during `scripts/bench-load --modes ingest`), and lz4 compresses several times faster. New
-- rows only: existing ones keep their compression until rewritten. Partitions created later
-- inherit the column's setting.
ALTER TABLE inbound_request ALTER COLUMN body SET COMPRESSION lz4;
