-- 0003_segment_indexes.sql - indexes for the segment compiler (common/segment.c).
--
-- The compiled criteria are EXISTS / NOT EXISTS subqueries on interactions
-- and appointments, tied to the customer by (tenant_id, customer_id).
-- PostgreSQL runs them as (anti-)joins over one tenant's rows, or, under
-- OR / NOT, as one index probe per customer. These indexes let both forms
-- read only index pages (INCLUDE columns make the scans index-only).

-- "Days since" criteria with a window (an interaction / appointment newer
-- than now() - N days): a range scan of the tenant's recent rows, with the
-- scope columns (channel, direction) at hand.
CREATE INDEX interactions_tenant_time ON interactions (tenant_id, occurred_at)
    INCLUDE (customer_id, channel, direction);
CREATE INDEX appointments_tenant_time ON appointments (tenant_id, scheduled_at)
    INCLUDE (customer_id);

-- "Latest satisfaction": only the rated rows take part, in (occurred_at, id)
-- order per customer, so "no later rated row" is one index probe and the
-- anti-join over a tenant reads this index only. (booking_intent, the other
-- "latest value" criterion, gains too little from its own index to pay for
-- the writes: its probes use interactions_customer.)
CREATE INDEX interactions_satisfaction
    ON interactions (tenant_id, customer_id, occurred_at DESC, id DESC)
    INCLUDE (satisfaction, channel, direction) WHERE satisfaction IS NOT NULL;

-- last_appointment_status and the "no later appointment" probe (ties on
-- scheduled_at broken by id); appointment counts read it index-only too.
CREATE INDEX appointments_latest
    ON appointments (tenant_id, customer_id, scheduled_at DESC, id DESC) INCLUDE (status);
