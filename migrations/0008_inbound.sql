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
CREATE INDEX messages_provider_msg ON messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

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
