-- What kind of call a usage event was: only inference calls are billable. Metadata, readiness
-- and repository-index calls are recorded with their kind and never priced. Rows written
-- before this column existed were all counted as inference calls; they keep that meaning.
ALTER TABLE usage_events ADD COLUMN call TEXT NOT NULL DEFAULT 'inference'
    CHECK (call IN ('inference', 'metadata', 'readiness', 'index', 'other'));
