-- 0014_messages_delivery_index.sql - one index less on messages, the table
-- that takes a row per send.
--
-- messages_delivery (delivery_id) served one reader: the cascade that
-- removes a deleted delivery's messages. Every message of a delivery has
-- that delivery's customer (outbound rows: the worker's outcome write;
-- replies, answers: the inbound functions of 0010), so the cascade finds
-- them through messages_tenant_customer instead, and a send's outcome write
-- maintains two indexes on messages instead of three.
DROP INDEX messages_delivery;

CREATE OR REPLACE FUNCTION crier_deliveries_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages m USING gone g
     WHERE m.tenant_id = g.tenant_id AND m.customer_id = g.customer_id
       AND m.delivery_id = g.id;
    RETURN NULL;
END $$;
