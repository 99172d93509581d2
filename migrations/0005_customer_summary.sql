-- 0005_customer_summary.sql - per-customer summaries of interactions and
-- appointments, kept by the database, so the segment compiler
-- (common/segment.c) answers the unscoped "latest" and "count" criteria from
-- the customers row instead of scanning the tenant's history.
--
-- Each column is exactly what the compiler's subqueries computed:
--   last_interaction_at      max(occurred_at) of the customer's interactions
--   last_rating              satisfaction of the latest interaction that has
--                            one, by (occurred_at, id)
--   last_booking_intent      booking_intent of the latest interaction that has
--                            one (non-NULL), by (occurred_at, id)
--   appointment_count        number of appointment rows, any status
--   last_scheduled_at        max(scheduled_at) of the appointment rows, any
--                            status, future ones included
--   last_appointment_status  status of the latest appointment row, by
--                            (scheduled_at, id)
-- NULL (0 for the count) when the customer has no such row. They are separate
-- from last_contact_at and last_appointment_at, which other writers own
-- (crier's sends, the importers, the customers API); the compiler combines
-- the two where the criterion says so.
--
-- Not indexed: updates of the customers row stay HOT (fillfactor 85).
ALTER TABLE customers
    ADD COLUMN last_interaction_at timestamptz,
    ADD COLUMN last_rating smallint,
    ADD COLUMN last_booking_intent boolean,
    ADD COLUMN appointment_count integer NOT NULL DEFAULT 0,
    ADD COLUMN last_scheduled_at timestamptz,
    ADD COLUMN last_appointment_status text;

-- Locks the given customers' rows, in id order (so two batches touching the
-- same customers cannot deadlock here). Every function below runs it first,
-- and computes the new values in a later statement, so with a fresh snapshot:
-- a concurrent transaction that changed the same customer's rows has
-- committed by then and is seen (READ COMMITTED), and two writers cannot
-- overwrite each other's summary with a stale one. Locking rows this
-- transaction already holds costs nothing.
CREATE FUNCTION customer_summary_lock(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM customers c WHERE c.id = ANY (ids) ORDER BY c.id FOR NO KEY UPDATE;
END $$;

-- Recompute the summaries of the given customers from the base tables, one
-- index probe per value (migrations 0001 and 0003). Rows whose values are
-- unchanged are not written. (MATERIALIZED: each value is computed once, not
-- again in the UPDATE's filter.)
CREATE FUNCTION customer_summary_interactions(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM customer_summary_lock(ids);
    WITH s AS MATERIALIZED (
        SELECT x.id,
               (SELECT max(i.occurred_at) FROM interactions i
                WHERE i.tenant_id = x.tenant_id AND i.customer_id = x.id) AS at,
               (SELECT i.satisfaction FROM interactions i
                WHERE i.tenant_id = x.tenant_id AND i.customer_id = x.id
                  AND i.satisfaction IS NOT NULL
                ORDER BY i.occurred_at DESC, i.id DESC LIMIT 1) AS rating,
               (SELECT i.booking_intent FROM interactions i
                WHERE i.tenant_id = x.tenant_id AND i.customer_id = x.id
                  AND i.booking_intent IS NOT NULL
                ORDER BY i.occurred_at DESC, i.id DESC LIMIT 1) AS intent
        FROM customers x WHERE x.id = ANY (ids))
    UPDATE customers c
    SET last_interaction_at = s.at, last_rating = s.rating, last_booking_intent = s.intent
    FROM s
    WHERE c.id = s.id
      AND (c.last_interaction_at, c.last_rating, c.last_booking_intent)
          IS DISTINCT FROM (s.at, s.rating, s.intent);
END $$;

CREATE FUNCTION customer_summary_appointments(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM customer_summary_lock(ids);
    WITH s AS MATERIALIZED (
        SELECT x.id,
               (SELECT count(*) FROM appointments a
                WHERE a.tenant_id = x.tenant_id AND a.customer_id = x.id) AS n,
               l.scheduled_at AS at, l.status
        FROM customers x
        LEFT JOIN LATERAL (SELECT a.scheduled_at, a.status FROM appointments a
                           WHERE a.tenant_id = x.tenant_id AND a.customer_id = x.id
                           ORDER BY a.scheduled_at DESC, a.id DESC LIMIT 1) l ON true
        WHERE x.id = ANY (ids))
    UPDATE customers c
    SET appointment_count = s.n, last_scheduled_at = s.at, last_appointment_status = s.status
    FROM s
    WHERE c.id = s.id
      AND (c.appointment_count, c.last_scheduled_at, c.last_appointment_status)
          IS DISTINCT FROM (s.n, s.at, s.status);
END $$;

-- The triggers: statement-level with transition tables, so a batch of rows
-- updates each customer it touched once, in one UPDATE. DELETE and UPDATE
-- recompute; an UPDATE counts a customer only when a row's summarised
-- columns changed (customer_id included: a row moved to another customer
-- touches both).
--
-- INSERT of interactions merges the batch into the (locked, current)
-- summary instead, without reading the customer's older rows: the newest
-- time is the greater of the two; the batch's latest rated row (and latest
-- row with an intent) is the customer's latest when the customer had none,
-- or when it is newer than every older interaction (after
-- last_interaction_at). Otherwise (a batch of older history) those customers
-- are recomputed. The merge is also right when the customer was already
-- recomputed with the batch (INSERT ... ON CONFLICT DO UPDATE fires the
-- UPDATE trigger first): the batch is then never newer than
-- last_interaction_at, so it recomputes again or changes nothing.
-- (Appointments always recompute: a count cannot be merged twice.)
CREATE FUNCTION customer_summary_interactions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT n.customer_id) INTO ids FROM summary_new n;
        IF ids IS NULL THEN
            RETURN NULL;
        END IF;
        PERFORM customer_summary_lock(ids);
        WITH b AS MATERIALIZED (
            SELECT n.customer_id AS id, max(n.occurred_at) AS at,
                   (array_agg(n.satisfaction ORDER BY n.occurred_at DESC, n.id DESC)
                    FILTER (WHERE n.satisfaction IS NOT NULL))[1] AS rating,
                   max(n.occurred_at) FILTER (WHERE n.satisfaction IS NOT NULL) AS rating_at,
                   (array_agg(n.booking_intent ORDER BY n.occurred_at DESC, n.id DESC)
                    FILTER (WHERE n.booking_intent IS NOT NULL))[1] AS intent,
                   max(n.occurred_at) FILTER (WHERE n.booking_intent IS NOT NULL) AS intent_at
            FROM summary_new n GROUP BY n.customer_id),
        m AS MATERIALIZED (
            SELECT c.id,
                   COALESCE((b.rating_at IS NULL OR c.last_rating IS NULL
                             OR b.rating_at > c.last_interaction_at)
                            AND (b.intent_at IS NULL OR c.last_booking_intent IS NULL
                                 OR b.intent_at > c.last_interaction_at), false) AS merged,
                   c.last_interaction_at AS old_at, c.last_rating AS old_rating,
                   c.last_booking_intent AS old_intent,
                   GREATEST(c.last_interaction_at, b.at) AS at,
                   CASE WHEN b.rating_at IS NULL THEN c.last_rating ELSE b.rating END AS rating,
                   CASE WHEN b.intent_at IS NULL THEN c.last_booking_intent ELSE b.intent END
                       AS intent
            FROM b JOIN customers c ON c.id = b.id),
        u AS (
            UPDATE customers c
            SET last_interaction_at = m.at, last_rating = m.rating, last_booking_intent = m.intent
            FROM m
            WHERE c.id = m.id AND m.merged
              AND (m.old_at, m.old_rating, m.old_intent) IS DISTINCT FROM (m.at, m.rating, m.intent))
        SELECT array_agg(m.id) FILTER (WHERE NOT m.merged) INTO ids FROM m;
    ELSIF TG_OP = 'DELETE' THEN
        -- Customers deleted in the same statement (ON DELETE CASCADE) are gone.
        SELECT array_agg(DISTINCT o.customer_id) INTO ids FROM summary_old o
        WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id);
    ELSE
        SELECT array_agg(DISTINCT d.customer_id) INTO ids FROM (
            (SELECT o.id, o.customer_id, o.occurred_at, o.satisfaction, o.booking_intent
             FROM summary_old o
             EXCEPT ALL
             SELECT n.id, n.customer_id, n.occurred_at, n.satisfaction, n.booking_intent
             FROM summary_new n)
            UNION ALL
            (SELECT n.id, n.customer_id, n.occurred_at, n.satisfaction, n.booking_intent
             FROM summary_new n
             EXCEPT ALL
             SELECT o.id, o.customer_id, o.occurred_at, o.satisfaction, o.booking_intent
             FROM summary_old o)) d;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM customer_summary_interactions(ids);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION customer_summary_appointments_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT n.customer_id) INTO ids FROM summary_new n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT o.customer_id) INTO ids FROM summary_old o
        WHERE EXISTS (SELECT 1 FROM customers c WHERE c.id = o.customer_id);
    ELSE
        SELECT array_agg(DISTINCT d.customer_id) INTO ids FROM (
            (SELECT o.id, o.customer_id, o.scheduled_at, o.status FROM summary_old o
             EXCEPT ALL
             SELECT n.id, n.customer_id, n.scheduled_at, n.status FROM summary_new n)
            UNION ALL
            (SELECT n.id, n.customer_id, n.scheduled_at, n.status FROM summary_new n
             EXCEPT ALL
             SELECT o.id, o.customer_id, o.scheduled_at, o.status FROM summary_old o)) d;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM customer_summary_appointments(ids);
    END IF;
    RETURN NULL;
END $$;

-- TRUNCATE empties the table for every tenant.
CREATE FUNCTION customer_summary_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'interactions' THEN
        UPDATE customers SET last_interaction_at = NULL, last_rating = NULL,
                             last_booking_intent = NULL
        WHERE last_interaction_at IS NOT NULL;
    ELSE
        UPDATE customers SET appointment_count = 0, last_scheduled_at = NULL,
                             last_appointment_status = NULL
        WHERE appointment_count <> 0;
    END IF;
    RETURN NULL;
END $$;

-- PostgreSQL allows transition tables on single-event triggers only.
CREATE TRIGGER customer_summary_insert AFTER INSERT ON interactions
    REFERENCING NEW TABLE AS summary_new
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_interactions_changed();
CREATE TRIGGER customer_summary_update AFTER UPDATE ON interactions
    REFERENCING OLD TABLE AS summary_old NEW TABLE AS summary_new
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_interactions_changed();
CREATE TRIGGER customer_summary_delete AFTER DELETE ON interactions
    REFERENCING OLD TABLE AS summary_old
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_interactions_changed();
CREATE TRIGGER customer_summary_truncate AFTER TRUNCATE ON interactions
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_truncated();

CREATE TRIGGER customer_summary_insert AFTER INSERT ON appointments
    REFERENCING NEW TABLE AS summary_new
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_appointments_changed();
CREATE TRIGGER customer_summary_update AFTER UPDATE ON appointments
    REFERENCING OLD TABLE AS summary_old NEW TABLE AS summary_new
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_appointments_changed();
CREATE TRIGGER customer_summary_delete AFTER DELETE ON appointments
    REFERENCING OLD TABLE AS summary_old
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_appointments_changed();
CREATE TRIGGER customer_summary_truncate AFTER TRUNCATE ON appointments
    FOR EACH STATEMENT EXECUTE FUNCTION customer_summary_truncated();

-- Backfill, set-based (one pass over each table). The migration runs in one
-- transaction, and the tables are locked against writes until it commits
-- (SHARE ROW EXCLUSIVE, as CREATE TRIGGER takes), so nothing changes between
-- this and the triggers.
UPDATE customers c
SET last_interaction_at = s.at, last_rating = s.rating, last_booking_intent = s.intent,
    appointment_count = COALESCE(s.n, 0), last_scheduled_at = s.ap_at,
    last_appointment_status = s.status
FROM (SELECT COALESCE(ix.customer_id, ap.customer_id) AS id, ix.at, ix.rating, ix.intent,
             ap.n, ap.at AS ap_at, ap.status
      FROM (SELECT i.customer_id, max(i.occurred_at) AS at,
                   (array_agg(i.satisfaction ORDER BY i.occurred_at DESC, i.id DESC)
                    FILTER (WHERE i.satisfaction IS NOT NULL))[1] AS rating,
                   (array_agg(i.booking_intent ORDER BY i.occurred_at DESC, i.id DESC)
                    FILTER (WHERE i.booking_intent IS NOT NULL))[1] AS intent
            FROM interactions i GROUP BY i.customer_id) ix
      FULL JOIN (SELECT a.customer_id, count(*) AS n, max(a.scheduled_at) AS at,
                        (array_agg(a.status ORDER BY a.scheduled_at DESC, a.id DESC))[1] AS status
                 FROM appointments a GROUP BY a.customer_id) ap
        ON ap.customer_id = ix.customer_id) s
WHERE c.id = s.id;
