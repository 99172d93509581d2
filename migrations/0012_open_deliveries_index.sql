-- 0012_open_deliveries_index.sql - the (campaign, status) index holds open
-- deliveries only.
--
-- Every reader of deliveries_campaign_status looks for open deliveries of a
-- campaign: the release walk ('queued'), the completion check and the close
-- of a cancelled campaign's leftovers ('pending', 'queued', 'sending',
-- 'retry'). Kept partial, a delivery leaves the index when it ends: the
-- outcome write of a send (sending -> sent) adds no entry to it, and the
-- index stays the size of the open work instead of growing with every status
-- a delivery ever had (it was about 3 entries per delivery, 19 MB for 100,000
-- sends, four times the primary key).
DROP INDEX deliveries_campaign_status;
CREATE INDEX deliveries_campaign_status ON deliveries (campaign_id, status, id)
    WHERE status IN ('pending', 'queued', 'sending', 'retry');
