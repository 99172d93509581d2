-- 0008_inbound.sql - what comes back: receipts, replies, opt-outs, call
-- outcomes and an external scorer's verdict, all on the delivery.

-- The provider's last reported status (e.g. 'delivered', 'no-answer'): status
-- callbacks are applied monotonically against it. answered_by is Twilio's AMD
-- verdict. opted_out_at, opened_at and clicked_at are set once, by the first
-- event that says so. outcome, sentiment and satisfaction come from the
-- outcome endpoint (an AI agent or a human scorer).
ALTER TABLE deliveries
    ADD COLUMN provider_status text,
    ADD COLUMN answered_by     text,
    ADD COLUMN opted_out_at    timestamptz,
    ADD COLUMN opened_at       timestamptz,
    ADD COLUMN clicked_at      timestamptz,
    ADD COLUMN outcome         text CHECK (outcome IS NULL OR length(outcome) BETWEEN 1 AND 64),
    ADD COLUMN sentiment       text CHECK (sentiment IN ('positive', 'neutral', 'negative')),
    ADD COLUMN satisfaction    smallint CHECK (satisfaction BETWEEN 1 AND 5);

-- Inbound bodies carry what the event said beyond the text: a gather's
-- question index and confidence, a keyword's meaning, the provider's ids.
ALTER TABLE messages ADD COLUMN meta jsonb;

-- Webhook events already applied, by the provider's own dedupe key
-- (MessageSid/CallSid + status, sg_event_id, ...). Repeated callbacks find
-- their key here and change nothing.
CREATE TABLE inbound_seen (
    tenant_id bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key       text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX inbound_seen_age ON inbound_seen (seen_at);

-- messages gets a row per send (outbound body) and per reply: its two
-- row-by-row foreign-key checks cost a third of the worker's outcome write.
-- Both references hold by construction (the worker inserts messages for the
-- deliveries it has just updated, the inbound consumer for deliveries it
-- has found), so, as for deliveries in 0007, statement-level triggers keep
-- the cascades: a delivery, customer or tenant deleted takes its messages.
ALTER TABLE messages DROP CONSTRAINT messages_delivery_id_fkey;
ALTER TABLE messages DROP CONSTRAINT messages_tenant_id_fkey;

CREATE FUNCTION crier_deliveries_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages m USING gone g WHERE m.delivery_id = g.id;
    RETURN NULL;
END $$;
CREATE TRIGGER deliveries_messages_cascade AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION crier_deliveries_deleted();

CREATE FUNCTION crier_customers_messages_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages m USING gone g
     WHERE m.tenant_id = g.tenant_id AND m.customer_id = g.id;
    RETURN NULL;
END $$;
CREATE TRIGGER customers_messages_cascade AFTER DELETE ON customers
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION crier_customers_messages_deleted();

CREATE FUNCTION crier_tenants_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages m USING gone g WHERE m.tenant_id = g.id;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_messages_cascade AFTER DELETE ON tenants
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION crier_tenants_deleted();

-- Email may opt in to a resend of sends left ambiguous by a dead worker
-- (DESIGN.md: "per-channel policy may allow a resend for email only"): a
-- tenant that sets it accepts a possible duplicate email rather than an
-- 'unknown'. Off by default; SMS and calls are never resent.
ALTER TABLE tenants ADD COLUMN email_resend_unknown boolean NOT NULL DEFAULT false;
