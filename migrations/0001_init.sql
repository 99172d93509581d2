-- 0001_init.sql - crier's data model (see DESIGN.md "Data model").
-- Every table holding tenant data carries tenant_id; child rows reference
-- their parents through (tenant_id, id) so a row can never point into
-- another tenant's data.

CREATE TABLE tenants (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    default_timezone text NOT NULL DEFAULT 'UTC',
    frequency_cap_7d integer CHECK (frequency_cap_7d IS NULL OR frequency_cap_7d > 0),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Only a SHA-256 of the secret part is stored; key_id is the public part
-- used to find the row, then the hash is compared in constant time.
CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id       text NOT NULL UNIQUE CHECK (key_id ~ '^[0-9a-f]{16}$'),
    key_hash     bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    name         text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE provider_accounts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    kind            text NOT NULL CHECK (kind IN ('twilio', 'sendgrid', 'smtp', 'sandbox')),
    name            text NOT NULL DEFAULT '',
    from_address    text NOT NULL CHECK (length(from_address) BETWEEN 1 AND 320),
    -- AES-256-GCM sealed JSON of the secrets ("v1:" + base64(nonce|ct|tag)).
    credentials     text,
    rate_per_second integer NOT NULL DEFAULT 10 CHECK (rate_per_second BETWEEN 1 AND 100000),
    is_default      boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    CHECK (kind <> 'sendgrid' OR channel = 'email'),
    CHECK (kind <> 'smtp' OR channel = 'email'),
    CHECK (kind <> 'twilio' OR channel IN ('sms', 'voice'))
);
CREATE UNIQUE INDEX provider_accounts_default
    ON provider_accounts (tenant_id, channel) WHERE is_default;

CREATE TABLE customers (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    external_id         text NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    first_name          text,
    last_name           text,
    phone               text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    email               text CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
    timezone            text NOT NULL DEFAULT 'UTC',
    locale              text,
    attributes          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    tags                text[] NOT NULL DEFAULT '{}',
    sms_opt_out         boolean NOT NULL DEFAULT false,
    email_opt_out       boolean NOT NULL DEFAULT false,
    voice_opt_out       boolean NOT NULL DEFAULT false,
    last_contact_at     timestamptz,
    last_appointment_at timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, external_id),
    UNIQUE (tenant_id, id)
) WITH (fillfactor = 85); -- room for HOT updates of last_contact_at (no indexed column)
CREATE INDEX customers_phone ON customers (tenant_id, phone) WHERE phone IS NOT NULL;
CREATE INDEX customers_email ON customers (tenant_id, lower(email)) WHERE email IS NOT NULL;
CREATE INDEX customers_tags ON customers USING gin (tags);

CREATE TABLE interactions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    customer_id   bigint NOT NULL,
    external_id   text,
    channel       text NOT NULL CHECK (channel IN ('sms', 'email', 'voice', 'web', 'in_person')),
    direction     text NOT NULL DEFAULT 'inbound' CHECK (direction IN ('inbound', 'outbound')),
    occurred_at   timestamptz NOT NULL,
    outcome       text,
    satisfaction  smallint CHECK (satisfaction BETWEEN 1 AND 5),
    booking_intent boolean,
    metadata      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (tenant_id, external_id)
);
CREATE INDEX interactions_customer ON interactions (tenant_id, customer_id, occurred_at DESC);

CREATE TABLE appointments (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    customer_id  bigint NOT NULL,
    external_id  text,
    status       text NOT NULL CHECK (status IN ('scheduled', 'completed', 'cancelled', 'no_show')),
    scheduled_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE CASCADE,
    UNIQUE (tenant_id, external_id)
);
CREATE INDEX appointments_customer ON appointments (tenant_id, customer_id, scheduled_at DESC);

CREATE TABLE segments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '',
    criteria    jsonb NOT NULL CHECK (jsonb_typeof(criteria) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE campaigns (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    type                text NOT NULL DEFAULT 'outbound_sales'
                        CHECK (type IN ('research', 'outbound_sales')),
    channel             text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    status              text NOT NULL DEFAULT 'draft'
                        CHECK (status IN ('draft', 'scheduled', 'running', 'paused',
                                          'completed', 'cancelled')),
    segment_id          bigint,
    segment_criteria    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(segment_criteria) = 'object'),
    message             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(message) = 'object'),
    agent_config        jsonb,
    variants            jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(variants) = 'array'),
    provider_account_id bigint,
    rate_per_minute     integer CHECK (rate_per_minute IS NULL OR rate_per_minute > 0),
    send_window         jsonb,
    expire_after        interval,
    scheduled_at        timestamptz,
    launched_at         timestamptz,
    expanded_at         timestamptz,
    paused_at           timestamptz,
    completed_at        timestamptz,
    cancelled_at        timestamptz,
    -- keyset cursor of the segment expansion: last customer id expanded
    dispatch_cursor     bigint NOT NULL DEFAULT 0,
    -- outbox marker: every delivery of this campaign with an id at or below
    -- it has had its job XADDed (ids of one campaign's expansion only grow)
    enqueued_cursor     bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, segment_id) REFERENCES segments (tenant_id, id),
    FOREIGN KEY (tenant_id, provider_account_id) REFERENCES provider_accounts (tenant_id, id),
    CHECK (status = 'draft' OR launched_at IS NOT NULL OR status = 'scheduled' OR status = 'cancelled'),
    CHECK (expanded_at IS NULL OR launched_at IS NOT NULL)
);
CREATE INDEX campaigns_tenant ON campaigns (tenant_id, id);
CREATE INDEX campaigns_active ON campaigns (status) WHERE status IN ('scheduled', 'running', 'paused');

-- One row per campaign x customer. The UNIQUE (campaign_id, customer_id)
-- constraint is the dedupe key: a second delivery for the same customer in
-- the same campaign cannot exist, whatever a process does.
CREATE TABLE deliveries (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL,
    campaign_id         bigint NOT NULL,
    customer_id         bigint NOT NULL,
    channel             text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'queued', 'sending', 'sent', 'delivered',
                                          'responded', 'undelivered', 'failed', 'retry',
                                          'unknown', 'skipped', 'cancelled')),
    attempts            smallint NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at     timestamptz,
    provider            text,
    provider_message_id text,
    variant             text,
    skip_reason         text,
    error_code          text,
    last_error          text,
    claimed_by          text,
    claimed_at          timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    delivered_at        timestamptz,
    responded_at        timestamptz,
    CONSTRAINT deliveries_dedupe_key UNIQUE (campaign_id, customer_id),
    FOREIGN KEY (tenant_id, campaign_id) REFERENCES campaigns (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id) ON DELETE CASCADE,
    CHECK (status NOT IN ('sent', 'delivered', 'responded', 'undelivered')
           OR provider_message_id IS NOT NULL),
    CHECK (status <> 'skipped' OR skip_reason IS NOT NULL),
    CHECK (responded_at IS NULL OR sent_at IS NOT NULL)
);
CREATE INDEX deliveries_campaign_status ON deliveries (campaign_id, status);
CREATE INDEX deliveries_provider_msg ON deliveries (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX deliveries_customer ON deliveries (tenant_id, customer_id, created_at DESC);
-- The dispatcher's scans: deliveries waiting for a job (outbox repair) and
-- retries that are due.
CREATE INDEX deliveries_pending ON deliveries (updated_at) WHERE status = 'pending';
CREATE INDEX deliveries_retry_due ON deliveries (next_attempt_at) WHERE status = 'retry';

CREATE TABLE messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    delivery_id         bigint REFERENCES deliveries (id) ON DELETE CASCADE,
    customer_id         bigint,
    direction           text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    channel             text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    body                text NOT NULL DEFAULT '',
    provider_message_id text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_delivery ON messages (delivery_id);
CREATE INDEX messages_tenant_customer ON messages (tenant_id, customer_id, created_at DESC);

CREATE TABLE suppressions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel    text NOT NULL CHECK (channel IN ('sms', 'email', 'voice')),
    address    text NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, channel, address)
);
