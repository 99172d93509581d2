-- 0004_provider_settings.sql - provider accounts over the API.
-- settings: the account's non-secret configuration (Twilio account SID, SMTP
-- host...), shown by the API; secrets stay sealed in credentials.
ALTER TABLE provider_accounts ADD COLUMN settings jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(settings) = 'object');

-- One default account per tenant and channel, checked at commit so a single
-- statement can move the default from one account to another.
DROP INDEX provider_accounts_default;
ALTER TABLE provider_accounts ADD CONSTRAINT provider_accounts_one_default
    EXCLUDE USING btree (tenant_id WITH =, channel WITH =) WHERE (is_default)
    DEFERRABLE INITIALLY DEFERRED;
