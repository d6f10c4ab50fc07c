-- The incremental export pages by when the ledger learned of a row (stored_at).
CREATE INDEX IF NOT EXISTS call_events_stored_at ON call_events (stored_at);
