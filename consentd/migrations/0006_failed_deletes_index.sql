-- consentd looks for refused audio whose delete failed every half minute
-- (consentd/owed_deletions.py): a small partial index keeps that a lookup.
CREATE INDEX IF NOT EXISTS call_events_failed_deletes ON call_events (node)
    WHERE kind = 'command_failed' AND data->>'command' = 'DeleteRecording';
