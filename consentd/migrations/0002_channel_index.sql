-- Adoption after a restart finds a live channel's call by its channel id.
CREATE INDEX IF NOT EXISTS call_events_started_channel
    ON call_events ((data->>'channel_id')) WHERE kind = 'call_started';
