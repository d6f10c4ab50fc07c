-- Webhooks: a durable outbox of "call.ended" and "voicemail.recorded" events
-- (consentd/webhook_sender.py sends them; consentd/webhooks.py builds the body).
--
-- The database fills it, not the daemon: a trigger on call_events adds the
-- call's events when its call_ended row is stored, whoever stores it and
-- whenever (live, or a journal replayed after a database outage). The ledger
-- stays append-only; only this table's delivery state changes.
CREATE TABLE webhook_outbox (
    id              bigserial   PRIMARY KEY,
    -- The idempotency id receivers see (body "id", X-Consentd-Delivery):
    -- one per (event, call), the same on every node and every retry.
    delivery_id     uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL
                    CHECK (event_type IN ('call.ended', 'voicemail.recorded')),
    call_id         text        NOT NULL,
    ledger_row      bigint      NOT NULL,  -- call_events.id of the call_ended row
    occurred_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Due time; a sender that claims a row pushes it out by a lease, so no
    -- other node takes the row while its POST is in flight.
    next_attempt_at timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    last_error      text,
    -- Fingerprints (SHA-256, 16 hex) of the URLs that acknowledged it; never the URLs.
    delivered_to    text[]      NOT NULL DEFAULT '{}',
    done_at         timestamptz,
    outcome         text        CHECK (outcome IN ('delivered', 'skipped', 'expired')),
    UNIQUE (event_type, call_id),
    CHECK ((done_at IS NULL) = (outcome IS NULL))
);

CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE done_at IS NULL;

-- SECURITY DEFINER with this schema as its search path: the daemon's role needs
-- no INSERT on the outbox (only SELECT and UPDATE, below), and no other schema
-- on a search path can stand in for these tables.
DO $migration$
BEGIN
    EXECUTE format($f$
        CREATE FUNCTION webhook_outbox_enqueue() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = %I, pg_temp AS $body$
        DECLARE
            voicemail_at timestamptz;
        BEGIN
            -- Enqueued when the call has ended, two seconds in the future: what the
            -- daemon writes right after the hangup (an empty file it deleted) is in
            -- the ledger by the time the details are read.
            INSERT INTO webhook_outbox
                (delivery_id, event_type, call_id, ledger_row, occurred_at, next_attempt_at)
            VALUES (md5('consentd-webhook:call.ended:' || NEW.call_id)::uuid, 'call.ended',
                    NEW.call_id, NEW.id, NEW.occurred_at, now() + interval '2 seconds')
            ON CONFLICT DO NOTHING;
            IF EXISTS (SELECT 1 FROM call_events
                       WHERE call_id = NEW.call_id AND kind = 'voicemail_started') THEN
                SELECT occurred_at INTO voicemail_at FROM call_events
                 WHERE call_id = NEW.call_id AND kind = 'voicemail_finished'
                 ORDER BY seq LIMIT 1;
                INSERT INTO webhook_outbox
                    (delivery_id, event_type, call_id, ledger_row, occurred_at, next_attempt_at)
                VALUES (md5('consentd-webhook:voicemail.recorded:' || NEW.call_id)::uuid,
                        'voicemail.recorded', NEW.call_id, NEW.id,
                        coalesce(voicemail_at, NEW.occurred_at), now() + interval '2 seconds')
                ON CONFLICT DO NOTHING;
            END IF;
            RETURN NULL;
        END;
        $body$ $f$, current_schema());
END;
$migration$;

-- AFTER: fires only for rows really stored (not for a replayed event that
-- ON CONFLICT skipped), and sees every row of the same batch.
CREATE TRIGGER call_events_webhook_outbox
    AFTER INSERT ON call_events
    FOR EACH ROW WHEN (NEW.kind = 'call_ended')
    EXECUTE FUNCTION webhook_outbox_enqueue();

-- The daemon's role claims rows and records deliveries: SELECT and UPDATE
-- (FOR UPDATE needs it) on this table only. It inserts nothing here (the
-- trigger does, as the schema's owner) and deletes nothing.
GRANT SELECT, UPDATE ON webhook_outbox TO consentd;
