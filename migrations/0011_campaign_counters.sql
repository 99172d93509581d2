-- 0011_campaign_counters.sql - a campaign's statistics, kept true and cheap.
--
-- GET /v1/campaigns/{id}/stats must equal the ground truth in deliveries and
-- answer in milliseconds at a million deliveries, so the numbers are counted
-- as they change, in the same transaction as the change: statement-level
-- AFTER triggers on deliveries read the statement's transition tables,
-- aggregate the delta per campaign and dimension, and add it with one upsert
-- per dimension per statement (never one per row). A reader sums the shards.
--
-- Shards: each backend claims a shard of its own the first time it writes
-- counters (crier_counter_shard: the lowest one free, held by a session-level
-- advisory lock until the backend exits), so no two live backends write the
-- same counter rows: concurrent workers updating one campaign never wait for
-- each other, and a transaction of many statements (the worker's inbound
-- batches) cannot deadlock on counters. Past 64 writing backends the extra
-- ones share (pg_backend_pid() % 64); a statement then upserts its rows in
-- (campaign_id, key) order, so two statements cannot deadlock each other. A
-- single shard's n may be negative (counted in on one shard, out on
-- another); only the sum over the shards means something.
--
-- Keys are "<scope>|<dimension>":
--   scope      '*' the whole campaign, 'c=<channel>', 'v=<variant>' (deliveries
--              without a variant are in no variant scope)
--   dimension  's:<status>', 'r:<skip_reason>' (skipped deliveries only),
--              'o:<outcome>', 'e:<sentiment>', 'oo' (opted_out_at set),
--              'op' (opened_at set), 'cl' (clicked_at set), 'sn' (satisfaction
--              given) and 'ss' (the sum of the satisfactions given)
CREATE TABLE campaign_counters (
    campaign_id bigint   NOT NULL,
    shard       smallint NOT NULL CHECK (shard BETWEEN 0 AND 63),
    key         text     NOT NULL,
    n           bigint   NOT NULL,
    PRIMARY KEY (campaign_id, shard, key)
) WITH (fillfactor = 70); -- n is not indexed: room for HOT updates

-- This backend's shard (see above). The claim is remembered in the session
-- setting crier.counter_shard; should it be lost (a rollback of the
-- transaction that set it, RESET ALL), the next call finds the backend's own
-- lock again (advisory locks are re-entrant) or a free shard.
CREATE FUNCTION crier_counter_shard() RETURNS smallint LANGUAGE plpgsql AS $$
DECLARE
    s int := NULLIF(current_setting('crier.counter_shard', true), '')::int;
BEGIN
    IF s IS NULL THEN
        FOR i IN 0 .. 63 LOOP
            IF pg_try_advisory_lock(728364, i) THEN
                s := i;
                EXIT;
            END IF;
        END LOOP;
        s := COALESCE(s, pg_backend_pid() % 64);
        PERFORM set_config('crier.counter_shard', s::text, false);
    END IF;
    RETURN s;
END $$;

-- One group of identical deliveries (by every counted column) -> the keys it
-- counts in, each with its weight (n deliveries; n * satisfaction for 'ss').
CREATE FUNCTION crier_counter_keys(ch text, var text, st text, reason text, outc text,
                                   snt text, sat smallint, oo boolean, op boolean,
                                   cl boolean, cnt bigint)
RETURNS TABLE (key text, n bigint) LANGUAGE sql IMMUTABLE AS $$
    SELECT s.scope || '|' || d.dim, d.w
      FROM (VALUES ('*'), ('c=' || ch), ('v=' || var)) s (scope),
           (VALUES ('s:' || st, cnt),
                   ('r:' || CASE WHEN st = 'skipped' THEN reason END, cnt),
                   ('o:' || outc, cnt),
                   ('e:' || snt, cnt),
                   (CASE WHEN oo THEN 'oo' END, cnt),
                   (CASE WHEN op THEN 'op' END, cnt),
                   (CASE WHEN cl THEN 'cl' END, cnt),
                   (CASE WHEN sat IS NOT NULL THEN 'sn' END, cnt),
                   (CASE WHEN sat IS NOT NULL THEN 'ss' END, cnt * sat)) d (dim, w)
     WHERE s.scope IS NOT NULL AND d.dim IS NOT NULL
$$;

-- The statement trigger of deliveries: groups the statement's rows by every
-- counted column (inserted rows count +1, deleted -1, updated -1 as they were
-- and +1 as they are), turns each group into its keys, and upserts the net
-- change per key into this backend's shard, in key order. The grouping is
-- written out per operation: a transition table cannot be passed to a
-- function. (Several data-modifying CTEs of one query on deliveries share
-- their transition tables and fire the trigger once.)
CREATE FUNCTION crier_deliveries_counted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sh smallint := crier_counter_shard();
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO campaign_counters AS c (campaign_id, shard, key, n)
        SELECT g.campaign_id, sh, k.key, sum(k.n)
          FROM (SELECT campaign_id, channel, variant, status, skip_reason, outcome, sentiment,
                       satisfaction, opted_out_at IS NOT NULL AS oo, opened_at IS NOT NULL AS op,
                       clicked_at IS NOT NULL AS cl, count(*) AS n
                  FROM new_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11) g,
               crier_counter_keys(g.channel, g.variant, g.status, g.skip_reason, g.outcome,
                                  g.sentiment, g.satisfaction, g.oo, g.op, g.cl, g.n) k
         GROUP BY g.campaign_id, k.key
        HAVING sum(k.n) <> 0
         ORDER BY g.campaign_id, k.key
        ON CONFLICT (campaign_id, shard, key) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF TG_OP = 'UPDATE' THEN
        -- Each changed row counts out with its old values and in with its
        -- new ones; an update that changes no counted column nets to zero
        -- and writes nothing.
        INSERT INTO campaign_counters AS c (campaign_id, shard, key, n)
        SELECT g.campaign_id, sh, k.key, sum(k.n)
          FROM (SELECT campaign_id, channel, variant, status, skip_reason, outcome, sentiment,
                       satisfaction, oo, op, cl, sum(w)::bigint AS n
                  FROM (SELECT campaign_id, channel, variant, status, skip_reason, outcome,
                               sentiment, satisfaction, opted_out_at IS NOT NULL AS oo,
                               opened_at IS NOT NULL AS op, clicked_at IS NOT NULL AS cl, 1 AS w
                          FROM new_rows
                        UNION ALL
                        SELECT campaign_id, channel, variant, status, skip_reason, outcome,
                               sentiment, satisfaction, opted_out_at IS NOT NULL,
                               opened_at IS NOT NULL, clicked_at IS NOT NULL, -1
                          FROM old_rows) x
                 GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
                HAVING sum(w) <> 0) g,
               crier_counter_keys(g.channel, g.variant, g.status, g.skip_reason, g.outcome,
                                  g.sentiment, g.satisfaction, g.oo, g.op, g.cl, g.n) k
         GROUP BY g.campaign_id, k.key
        HAVING sum(k.n) <> 0
         ORDER BY g.campaign_id, k.key
        ON CONFLICT (campaign_id, shard, key) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSE
        -- A campaign's own deletion (its cascade through deliveries) is not
        -- counted: its counters go with it (crier_campaigns_uncounted).
        INSERT INTO campaign_counters AS c (campaign_id, shard, key, n)
        SELECT g.campaign_id, sh, k.key, -sum(k.n)
          FROM (SELECT campaign_id, channel, variant, status, skip_reason, outcome, sentiment,
                       satisfaction, opted_out_at IS NOT NULL AS oo, opened_at IS NOT NULL AS op,
                       clicked_at IS NOT NULL AS cl, count(*) AS n
                  FROM old_rows GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11) g,
               crier_counter_keys(g.channel, g.variant, g.status, g.skip_reason, g.outcome,
                                  g.sentiment, g.satisfaction, g.oo, g.op, g.cl, g.n) k
         WHERE EXISTS (SELECT 1 FROM campaigns x WHERE x.id = g.campaign_id)
         GROUP BY g.campaign_id, k.key
        HAVING sum(k.n) <> 0
         ORDER BY g.campaign_id, k.key
        ON CONFLICT (campaign_id, shard, key) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION crier_deliveries_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM campaign_counters;
    RETURN NULL;
END $$;

CREATE FUNCTION crier_campaigns_uncounted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM campaign_counters c USING gone g WHERE c.campaign_id = g.id;
    RETURN NULL;
END $$;

-- Writers wait from here to the commit; the backfill below then sees every
-- delivery, and every later change goes through the triggers.
LOCK TABLE deliveries IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER deliveries_counters_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crier_deliveries_counted();
CREATE TRIGGER deliveries_counters_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crier_deliveries_counted();
CREATE TRIGGER deliveries_counters_delete AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION crier_deliveries_counted();
CREATE TRIGGER deliveries_counters_truncate AFTER TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION crier_deliveries_truncated();
-- Customers' deletions cascade through deliveries' delete trigger
-- (0007's customers_deliveries_cascade); a campaign's counters go with it.
CREATE TRIGGER campaigns_counters_cascade AFTER DELETE ON campaigns
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION crier_campaigns_uncounted();

INSERT INTO campaign_counters (campaign_id, shard, key, n)
SELECT g.campaign_id, 0, k.key, sum(k.n)
  FROM (SELECT campaign_id, channel, variant, status, skip_reason, outcome, sentiment,
               satisfaction, opted_out_at IS NOT NULL AS oo, opened_at IS NOT NULL AS op,
               clicked_at IS NOT NULL AS cl, count(*) AS n
          FROM deliveries GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11) g,
       crier_counter_keys(g.channel, g.variant, g.status, g.skip_reason, g.outcome, g.sentiment,
                          g.satisfaction, g.oo, g.op, g.cl, g.n) k
 GROUP BY g.campaign_id, k.key
HAVING sum(k.n) <> 0;
