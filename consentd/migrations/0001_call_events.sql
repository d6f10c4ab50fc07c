-- The consent ledger: an append-only log of everything consent-relevant that
-- happened on a call. Summaries (call details, exports) are derived from it.
CREATE TABLE call_events (
    id          bigserial PRIMARY KEY,
    -- Idempotency key: the same event replayed from a journal is stored once.
    event_key   text        NOT NULL UNIQUE,
    call_id     text        NOT NULL,
    node        text        NOT NULL,
    seq         integer     NOT NULL,
    kind        text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    data        jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX call_events_call_seq ON call_events (call_id, seq);
CREATE INDEX call_events_started ON call_events (occurred_at DESC) WHERE kind = 'call_started';

-- A ledger that can be edited proves nothing: refuse updates and deletes.
CREATE FUNCTION call_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'call_events is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER call_events_append_only
    BEFORE UPDATE OR DELETE ON call_events
    FOR EACH ROW EXECUTE FUNCTION call_events_append_only();
