-- 0007_dispatch_policy.sql - leases, send windows, caps and a faster expansion.

-- Several dispatchers may run: a campaign's expansion and release belong to
-- the dispatcher holding its lease, renewed by every page it writes. A
-- dispatcher that dies loses the lease when lease_until passes.
ALTER TABLE campaigns ADD COLUMN lease_owner text;
ALTER TABLE campaigns ADD COLUMN lease_until timestamptz;
-- The release cursor (enqueued_cursor) trails the expansion: every queued
-- delivery of the campaign with an id at or below it has had its job
-- released (to a stream, or to crier:delayed). last_delivery_id is the
-- highest delivery id the expansion created, so "enqueued_cursor <
-- last_delivery_id" says there is something left to release.
ALTER TABLE campaigns ADD COLUMN last_delivery_id bigint NOT NULL DEFAULT 0;
UPDATE campaigns k SET last_delivery_id = COALESCE(
    (SELECT max(d.id) FROM deliveries d WHERE d.campaign_id = k.id), 0);

DROP INDEX deliveries_customer;

-- (campaign_id, status, id): the stats count by status from the index alone,
-- and the release walks a campaign's queued deliveries in id order from its
-- cursor, whatever the campaign's size.
DROP INDEX deliveries_campaign_status;
CREATE INDEX deliveries_campaign_status ON deliveries (campaign_id, status, id);

-- The expansion writes up to a million delivery rows per campaign; the two
-- row-by-row foreign-key checks cost more than the insert itself. Both
-- references hold by construction (the expansion selects the customers and
-- holds the campaign row locked), so the checks go and statement-level
-- triggers keep the cascades. A customer deleted while a page of the
-- expansion is in flight can leave a delivery without its customer; the
-- worker's claim skips it ('customer_deleted').
ALTER TABLE deliveries DROP CONSTRAINT deliveries_tenant_id_campaign_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_tenant_id_customer_id_fkey;

-- A customer's deliveries are found through the dedupe key, one probe per
-- campaign of the tenant, so deliveries need no index of their own on
-- customer_id (one index less to write per delivery).
CREATE FUNCTION crier_customers_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deliveries d USING gone g, campaigns k
     WHERE k.tenant_id = g.tenant_id AND d.campaign_id = k.id AND d.customer_id = g.id;
    RETURN NULL;
END $$;
CREATE TRIGGER customers_deliveries_cascade AFTER DELETE ON customers
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION crier_customers_deleted();

CREATE FUNCTION crier_campaigns_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM deliveries d USING gone g
     WHERE d.campaign_id = g.id AND d.tenant_id = g.tenant_id;
    RETURN NULL;
END $$;
CREATE TRIGGER campaigns_deliveries_cascade AFTER DELETE ON campaigns
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION crier_campaigns_deleted();

-- crier_window_due(tz, window, at): at itself when at falls inside the send
-- window in time zone tz, else the window's next opening. The window is
-- {"start": "HH:MM", "end": "HH:MM", "days": [ISO weekdays]} in local time
-- (NULL: 09:00-20:00 every day); an end at or before the start runs past
-- midnight and belongs to the day it starts on. An unknown zone counts as UTC.
CREATE FUNCTION crier_window_due(tz text, win jsonb, at timestamptz)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
DECLARE
    s    time := COALESCE(win->>'start', '09:00')::time;
    e    time := COALESCE(win->>'end', '20:00')::time;
    days int[] := COALESCE((SELECT array_agg(d::int) FROM jsonb_array_elements_text(
                                CASE WHEN jsonb_typeof(win->'days') = 'array'
                                     THEN win->'days' END) d),
                            '{1,2,3,4,5,6,7}');
    loc  timestamp;
    cand timestamp;
    zone text := COALESCE(tz, 'UTC');
BEGIN
    BEGIN
        loc := at AT TIME ZONE zone;
    EXCEPTION WHEN invalid_parameter_value THEN
        zone := 'UTC';
        loc := at AT TIME ZONE zone;
    END;
    IF e = '00:00' THEN
        e := '24:00';
    END IF;
    IF s < e THEN
        IF extract(isodow FROM loc)::int = ANY (days) AND loc::time >= s AND loc::time < e THEN
            RETURN at;
        END IF;
    ELSIF (loc::time >= s AND extract(isodow FROM loc)::int = ANY (days))
       OR (loc::time < e AND extract(isodow FROM loc - interval '1 day')::int = ANY (days)) THEN
        RETURN at;
    END IF;
    FOR i IN 0..7 LOOP
        cand := (loc::date + i) + s;
        IF cand > loc AND extract(isodow FROM cand)::int = ANY (days) THEN
            RETURN cand AT TIME ZONE zone;
        END IF;
    END LOOP;
    RETURN NULL; -- not reached: days is never empty
END $$;

-- Contacts of a customer over the rolling last 7 days, across campaigns:
-- the outbound messages sent to them.
CREATE FUNCTION crier_contacts_7d(tenant bigint, customer bigint)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT count(*) FROM messages m
     WHERE m.tenant_id = tenant AND m.customer_id = customer AND m.direction = 'outbound'
       AND m.created_at > now() - interval '7 days'
$$;
