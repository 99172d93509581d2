-- 0006_resume_requeue.sql - resume continues exactly where pause stopped.
-- While a campaign is paused, workers acknowledge its jobs without sending,
-- and its deliveries stay 'queued'. Each resume bumps resume_gen; the
-- dispatcher enqueues the campaign's queued deliveries again and then
-- records the generation it served in requeued_gen (after the XADDs, so a
-- crash repeats the enqueue - extra jobs are harmless - and never skips it).
ALTER TABLE campaigns ADD COLUMN resume_gen integer NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN requeued_gen integer NOT NULL DEFAULT 0;
CREATE INDEX campaigns_requeue ON campaigns (id) WHERE resume_gen > requeued_gen;
