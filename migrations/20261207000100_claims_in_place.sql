-- Claims and lease renewals as in-place (HOT) updates again (issue 12).
--
-- A claim sets lease_until, lease_owner, attempts and updated_at. PostgreSQL updates a row in
-- place, without a new entry in every index, only when no indexed column changes, and a
-- column counts as indexed when any index names it, in its key or in its predicate. Since
-- migration 20261202000400, event_settled_bad had updated_at as its key, so every claim and
-- every lease renewal wrote a new entry into each of the outbox's indexes (six per event, on a
-- table that grows by thousands of rows a second): the dispatcher's claims cost as much in
-- index insertions as the ingest itself.
--
-- The index keeps its purpose, finding the failed and dead events without reading the others;
-- gateway_failures() filters their updated_at in the heap. `state` is already in the predicate
-- of the pending-only indexes, so settles, which change it, were never in place anyway.
DROP INDEX event_settled_bad;
CREATE INDEX event_settled_bad ON event (state) WHERE state IN ('failed', 'dead');
