-- 0010_inbound_apply.sql - how the worker applies what comes back (receipts,
-- replies, opt-outs, email events, call answers) and reconciles deliveries
-- whose receipt never came. worker/inbound.c calls crier_inbound_batch with
-- one batch of stream entries (one statement, one transaction);
-- worker/reconcile.c feeds the provider's answer to the same
-- crier_inbound_twilio_status a status callback goes through.
--
-- Every change lands on the deliveries row, so the stats (a GROUP BY over
-- deliveries.status) stay the ground truth. Each function answers one word:
--   applied     the delivery (or customer) changed
--   unchanged   recorded, but nothing moved (a late or repeated report)
--   duplicate   the event's dedupe key was already in inbound_seen
--   unmatched   no delivery of this tenant (another tenant's, or none)
--   wait        the delivery exists but its send is not written yet (or
--               no delivery has this provider id yet while one of the
--               tenant's SMS or calls is 'sending'): the entry stays
--               pending and is retried; nothing was written
--   ignored     an event kind crier does not act on
-- 'wait' is decided before the dedupe key is taken, so a retried entry is
-- never mistaken for its own duplicate.

-- When reconciliation last asked the provider about a delivery stuck in
-- 'sent'; the next question waits as long again as the delivery had waited
-- then (doubling), and deliveries sent more than 3 days ago are left alone.
ALTER TABLE deliveries ADD COLUMN reconciled_at timestamptz;
CREATE INDEX deliveries_sent_twilio ON deliveries (sent_at)
    WHERE status = 'sent' AND provider = 'twilio';

-- How far a provider status is along its way: a status callback may update
-- provider_status only to a later one (they arrive out of order). Finals
-- share a rank, so the first final wins; 'read' comes after 'delivered'.
CREATE FUNCTION crier_provider_rank(s text) RETURNS int
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s IN ('accepted', 'scheduled', 'queued', 'initiated', 'processed') THEN 1
        WHEN s IN ('sending', 'ringing', 'deferred') THEN 2
        WHEN s IN ('sent', 'in-progress', 'answered') THEN 3
        WHEN s IN ('delivered', 'undelivered', 'failed', 'canceled', 'completed', 'busy',
                   'no-answer', 'partially_delivered', 'bounce', 'blocked', 'dropped') THEN 4
        WHEN s = 'read' THEN 5
        ELSE 0 END
$$;

-- Applies one provider report to a delivery, monotonically:
--   sending < sent < delivered < responded; 'undelivered' / 'failed' only
--   from 'sent'; delivered, undelivered, failed and responded are final.
-- target is the delivery status the report asks for (NULL: none, only
-- provider_status moves); code the error code kept with an undelivered or
-- failed receipt; answered Twilio's AMD verdict; p_at the report's time.
-- delivered_at is set once, also on a responded delivery (a call answered
-- before its 'completed' callback).
CREATE FUNCTION crier_delivery_report(did bigint, tenant bigint, pstatus text, target text,
                                      code text, answered text, p_at timestamptz)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d  record;
    st text;
    ps text;
BEGIN
    SELECT status, provider_status, delivered_at, answered_by INTO d
      FROM deliveries WHERE id = did AND tenant_id = tenant FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'unmatched';
    END IF;
    st := CASE WHEN d.status = 'sent' AND target IN ('delivered', 'undelivered', 'failed')
               THEN target ELSE d.status END;
    ps := CASE WHEN pstatus IS NOT NULL
                AND crier_provider_rank(pstatus) > crier_provider_rank(d.provider_status)
               THEN pstatus ELSE d.provider_status END;
    UPDATE deliveries SET
        status = st,
        provider_status = ps,
        error_code = CASE WHEN st <> d.status AND st IN ('undelivered', 'failed')
                          THEN COALESCE(code, error_code) ELSE error_code END,
        delivered_at = CASE WHEN target = 'delivered' AND st IN ('delivered', 'responded')
                            THEN COALESCE(delivered_at, p_at) ELSE delivered_at END,
        answered_by = COALESCE(answered, answered_by),
        updated_at = now()
     WHERE id = did AND tenant_id = tenant
       AND (st <> d.status OR ps IS DISTINCT FROM d.provider_status
            OR (target = 'delivered' AND st IN ('delivered', 'responded')
                AND d.delivered_at IS NULL)
            OR (answered IS NOT NULL AND answered IS DISTINCT FROM d.answered_by));
    RETURN CASE WHEN st <> d.status THEN 'applied' ELSE 'unchanged' END;
END $$;

-- Records an event's dedupe key; false when it was there already.
CREATE FUNCTION crier_inbound_seen(tenant bigint, k text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO inbound_seen (tenant_id, key) VALUES (tenant, left(k, 200))
        ON CONFLICT DO NOTHING;
    RETURN FOUND;
END $$;

-- Twilio message and call status (a callback, or reconciliation's answer).
-- Messages: delivered/read → delivered, undelivered → undelivered, failed and
-- canceled → failed (code: ErrorCode). Calls: completed → delivered (the
-- call connected), busy/no-answer/failed/canceled → undelivered with the
-- call status as the code. Dedupe key "<Sid>:<status>".
CREATE FUNCTION crier_inbound_twilio_status(tenant bigint, sid text, pstatus text, code text,
                                            answered text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    d      record;
    target text;
BEGIN
    SELECT id, channel, status INTO d FROM deliveries
     WHERE provider_message_id = sid AND tenant_id = tenant AND channel IN ('sms', 'voice');
    IF NOT FOUND THEN
        -- Another tenant's message is never touched (nor looked at). A sid
        -- none of this tenant's deliveries has yet may be a send whose
        -- outcome is still being written: only while one of its SMS or
        -- calls is 'sending' (claimed, outcome not written).
        IF EXISTS (SELECT 1 FROM campaigns k
                     JOIN deliveries x ON x.campaign_id = k.id AND x.status = 'sending'
                      AND x.tenant_id = tenant
                    WHERE k.tenant_id = tenant AND k.channel IN ('sms', 'voice')) THEN
            RETURN 'wait';
        END IF;
        RETURN 'unmatched';
    END IF;
    IF NOT crier_inbound_seen(tenant, sid || ':' || pstatus) THEN
        RETURN 'duplicate';
    END IF;
    IF d.channel = 'voice' THEN
        target := CASE WHEN pstatus = 'completed' THEN 'delivered'
                       WHEN pstatus IN ('busy', 'no-answer', 'failed', 'canceled')
                       THEN 'undelivered' END;
        code := CASE WHEN target = 'undelivered' THEN pstatus END;
    ELSE
        target := CASE WHEN pstatus IN ('delivered', 'read') THEN 'delivered'
                       WHEN pstatus = 'undelivered' THEN 'undelivered'
                       WHEN pstatus IN ('failed', 'canceled') THEN 'failed' END;
    END IF;
    RETURN crier_delivery_report(d.id, tenant, pstatus, target, NULLIF(code, ''),
                                 NULLIF(answered, ''), now());
END $$;

-- The most recent SMS delivery sent to any customer with this phone within
-- the attribution window (a customer's deliveries are found through the
-- dedupe key, one probe per recent SMS campaign of the tenant).
CREATE FUNCTION crier_sms_attribution(p_tenant bigint, p_phone text, p_window_s int)
RETURNS TABLE (delivery_id bigint, customer_id bigint, status text)
LANGUAGE sql STABLE AS $$
    SELECT d.id, d.customer_id, d.status
      FROM customers c
      JOIN campaigns k ON k.tenant_id = c.tenant_id AND k.channel = 'sms'
       AND k.launched_at IS NOT NULL
       AND COALESCE(k.completed_at, k.cancelled_at, now())
           > now() - make_interval(secs => p_window_s)
      JOIN deliveries d ON d.campaign_id = k.id AND d.customer_id = c.id
       AND d.tenant_id = c.tenant_id
       AND d.status IN ('sent', 'delivered', 'responded', 'undelivered')
       AND d.sent_at > now() - make_interval(secs => p_window_s)
     WHERE c.tenant_id = p_tenant AND c.phone = p_phone
     ORDER BY d.sent_at DESC, d.id DESC
     LIMIT 1
$$;

-- An inbound SMS. p: sid, from, to, body, phone (From in E.164, or absent),
-- keyword (stop | start | help, or absent: the worker reads it). Stored as an
-- inbound message of the customer; attributed to their latest SMS delivery
-- in the window, which becomes 'responded' once. An opt-out is not an
-- answer: a STOP reply never makes a delivery 'responded' (any other reply
-- does, START/YES and HELP included: "Yes" is the commonest answer to an
-- offer). STOP opts every customer with that phone out of SMS,
-- suppresses the address ('stop_keyword') and stamps the delivery's
-- opted_out_at; START undoes the opt-out and removes that suppression.
-- Dedupe key: the MessageSid.
CREATE FUNCTION crier_inbound_twilio_sms(tenant bigint, p jsonb, window_s int)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_sid    text := p->>'sid';
    v_phone  text := p->>'phone';
    v_addr   text := COALESCE(p->>'phone', p->>'from');
    v_kw     text := p->>'keyword';
    v_did    bigint;
    v_status text;
    v_cust   bigint;
    res      text := 'unchanged';
BEGIN
    IF NOT crier_inbound_seen(tenant, v_sid) THEN
        RETURN 'duplicate';
    END IF;
    IF v_phone IS NOT NULL THEN
        SELECT a.delivery_id, a.customer_id, a.status INTO v_did, v_cust, v_status
          FROM crier_sms_attribution(tenant, v_phone, window_s) a;
        IF v_cust IS NULL THEN
            SELECT c.id INTO v_cust FROM customers c
             WHERE c.tenant_id = tenant AND c.phone = v_phone ORDER BY c.id LIMIT 1;
        END IF;
    END IF;
    IF v_kw = 'stop' THEN
        UPDATE customers c SET sms_opt_out = true, updated_at = now()
         WHERE c.tenant_id = tenant AND c.phone = v_phone AND NOT c.sms_opt_out;
        INSERT INTO suppressions (tenant_id, channel, address, reason)
            VALUES (tenant, 'sms', v_addr, 'stop_keyword') ON CONFLICT DO NOTHING;
        UPDATE deliveries SET opted_out_at = now(), updated_at = now()
         WHERE id = v_did AND tenant_id = tenant AND opted_out_at IS NULL;
        res := 'applied';
    ELSIF v_kw = 'start' THEN
        UPDATE customers c SET sms_opt_out = false, updated_at = now()
         WHERE c.tenant_id = tenant AND c.phone = v_phone AND c.sms_opt_out;
        DELETE FROM suppressions s WHERE s.tenant_id = tenant AND s.channel = 'sms'
           AND s.address = v_addr AND s.reason = 'stop_keyword';
        res := 'applied';
    END IF;
    IF v_kw IS DISTINCT FROM 'stop' AND v_status IN ('sent', 'delivered') THEN
        UPDATE deliveries SET status = 'responded', responded_at = now(), updated_at = now()
         WHERE id = v_did AND tenant_id = tenant AND status IN ('sent', 'delivered');
        res := 'applied';
    END IF;
    INSERT INTO messages (tenant_id, delivery_id, customer_id, direction, channel, body,
                          provider_message_id, meta)
    VALUES (tenant, v_did, v_cust, 'inbound', 'sms', COALESCE(p->>'body', ''), v_sid,
            jsonb_strip_nulls(jsonb_build_object('keyword', v_kw, 'from', p->>'from',
                                                 'to', p->>'to')));
    RETURN res;
END $$;

-- A Twilio <Gather> answer. p: delivery, q, call_sid, speech, digits,
-- confidence (a number). Stored as an inbound voice message of the delivery
-- (meta: q, confidence, digits); an answer makes the delivery 'responded'.
-- Dedupe key "<CallSid>:gather:<q>".
CREATE FUNCTION crier_inbound_twilio_gather(tenant bigint, p jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    did    bigint := (p->>'delivery')::bigint;
    csid   text := p->>'call_sid';
    answer text := COALESCE(NULLIF(p->>'speech', ''), NULLIF(p->>'digits', ''));
    d      record;
BEGIN
    SELECT id, customer_id, status, provider_message_id INTO d FROM deliveries
     WHERE id = did AND tenant_id = tenant AND channel = 'voice';
    IF NOT FOUND OR (csid IS NOT NULL AND d.provider_message_id IS NOT NULL
                     AND d.provider_message_id <> csid) THEN
        RETURN 'unmatched';
    END IF;
    IF d.status IN ('pending', 'queued', 'sending', 'retry') THEN
        RETURN 'wait';
    END IF;
    IF NOT crier_inbound_seen(tenant, COALESCE(csid, 'delivery' || did) || ':gather:'
                                      || COALESCE(p->>'q', '')) THEN
        RETURN 'duplicate';
    END IF;
    IF answer IS NULL THEN
        RETURN 'ignored';
    END IF;
    INSERT INTO messages (tenant_id, delivery_id, customer_id, direction, channel, body,
                          provider_message_id, meta)
    VALUES (tenant, did, d.customer_id, 'inbound', 'voice', answer, csid,
            jsonb_strip_nulls(jsonb_build_object('q', p->'q', 'confidence', p->'confidence',
                                                 'digits', p->'digits')));
    UPDATE deliveries SET status = 'responded', responded_at = now(), updated_at = now()
     WHERE id = did AND tenant_id = tenant AND status IN ('sent', 'delivered');
    RETURN CASE WHEN FOUND THEN 'applied' ELSE 'unchanged' END;
END $$;

-- One SendGrid event (the object as SendGrid sent it; the worker checked
-- event and sg_event_id). The delivery is the custom_args delivery_id when
-- it is this tenant's, else the one whose X-Message-Id starts
-- sg_message_id; an event naming another tenant changes nothing.
-- delivered → delivered; bounce → undelivered (a hard bounce, type
-- 'bounce', also suppresses the address: 'bounce'); dropped → failed;
-- processed / deferred → provider_status only; open / click → opened_at /
-- clicked_at once; spamreport → suppression 'spamreport' + opted_out_at;
-- unsubscribe / group_unsubscribe → suppression 'unsubscribe' +
-- opted_out_at + the customer's email opt-out. Dedupe key: sg_event_id.
CREATE FUNCTION crier_inbound_sendgrid(tenant bigint, ev jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    kind  text := ev->>'event';
    btype text := COALESCE(NULLIF(ev->>'type', ''), 'bounce');
    did   text := ev->>'delivery_id';
    v_id   bigint;
    v_cust bigint;
    v_st   text;
    v_at  timestamptz := now();
    addr  text;
    res   text := 'unchanged';
BEGIN
    IF ev->>'tenant_id' IS NOT NULL AND ev->>'tenant_id' <> tenant::text THEN
        RETURN 'unmatched';
    END IF;
    IF did ~ '^[0-9]{1,18}$' THEN
        SELECT x.id, x.customer_id, x.status INTO v_id, v_cust, v_st FROM deliveries x
         WHERE x.id = did::bigint AND x.tenant_id = tenant AND x.channel = 'email';
    END IF;
    IF v_id IS NULL AND ev->>'sg_message_id' IS NOT NULL THEN
        SELECT x.id, x.customer_id, x.status INTO v_id, v_cust, v_st FROM deliveries x
         WHERE x.provider_message_id = split_part(ev->>'sg_message_id', '.', 1)
           AND x.tenant_id = tenant AND x.channel = 'email'
         LIMIT 1;
    END IF;
    IF v_id IS NULL THEN
        RETURN 'unmatched';
    END IF;
    IF v_st IN ('pending', 'queued', 'sending', 'retry') THEN
        RETURN 'wait';
    END IF;
    IF NOT crier_inbound_seen(tenant, 'sg:' || (ev->>'sg_event_id')) THEN
        RETURN 'duplicate';
    END IF;
    IF jsonb_typeof(ev->'timestamp') = 'number'
       AND (ev->>'timestamp')::double precision
           BETWEEN extract(epoch FROM now()) - 30 * 86400 AND extract(epoch FROM now()) + 3600 THEN
        v_at := to_timestamp((ev->>'timestamp')::double precision);
    END IF;
    addr := lower(COALESCE(NULLIF(ev->>'email', ''),
                           (SELECT c.email FROM customers c
                             WHERE c.tenant_id = tenant AND c.id = v_cust)));
    IF kind = 'delivered' THEN
        RETURN crier_delivery_report(v_id, tenant, 'delivered', 'delivered', NULL, NULL, v_at);
    ELSIF kind = 'bounce' THEN
        IF btype <> 'blocked' AND addr IS NOT NULL THEN
            INSERT INTO suppressions (tenant_id, channel, address, reason)
                VALUES (tenant, 'email', addr, 'bounce') ON CONFLICT DO NOTHING;
        END IF;
        RETURN crier_delivery_report(v_id, tenant, btype, 'undelivered', btype, NULL, v_at);
    ELSIF kind = 'dropped' THEN
        RETURN crier_delivery_report(v_id, tenant, 'dropped', 'failed', 'dropped', NULL, v_at);
    ELSIF kind IN ('processed', 'deferred') THEN
        RETURN crier_delivery_report(v_id, tenant, kind, NULL, NULL, NULL, v_at);
    ELSIF kind = 'open' THEN
        UPDATE deliveries SET opened_at = v_at, updated_at = now()
         WHERE id = v_id AND tenant_id = tenant AND opened_at IS NULL;
    ELSIF kind = 'click' THEN
        UPDATE deliveries SET clicked_at = v_at, updated_at = now()
         WHERE id = v_id AND tenant_id = tenant AND clicked_at IS NULL;
    ELSIF kind IN ('spamreport', 'unsubscribe', 'group_unsubscribe') THEN
        IF addr IS NOT NULL THEN
            INSERT INTO suppressions (tenant_id, channel, address, reason)
                VALUES (tenant, 'email', addr,
                        CASE kind WHEN 'spamreport' THEN 'spamreport' ELSE 'unsubscribe' END)
                ON CONFLICT DO NOTHING;
        END IF;
        IF kind <> 'spamreport' THEN
            UPDATE customers c SET email_opt_out = true, updated_at = now()
             WHERE c.tenant_id = tenant AND c.id = v_cust AND NOT c.email_opt_out;
        END IF;
        UPDATE deliveries SET opted_out_at = v_at, updated_at = now()
         WHERE id = v_id AND tenant_id = tenant AND opted_out_at IS NULL;
    ELSE
        RETURN 'ignored';
    END IF;
    IF FOUND THEN
        res := 'applied';
    END IF;
    RETURN res;
END $$;

-- One batch of stream entries, in stream order, in the caller's one
-- transaction: kinds[i] (twilio_status | twilio_sms | twilio_gather |
-- sendgrid_event), tenants[i], payloads[i] (built by worker/inbound.c).
-- Returns one result word per entry, in order.
CREATE FUNCTION crier_inbound_batch(kinds text[], tenants bigint[], payloads jsonb[],
                                    window_s int)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    p jsonb;
BEGIN
    FOR i IN 1 .. COALESCE(array_length(kinds, 1), 0) LOOP
        p := payloads[i];
        RETURN NEXT CASE kinds[i]
            WHEN 'twilio_status' THEN
                crier_inbound_twilio_status(tenants[i], p->>'sid', p->>'status',
                                            p->>'error_code', p->>'answered_by')
            WHEN 'twilio_sms' THEN crier_inbound_twilio_sms(tenants[i], p, window_s)
            WHEN 'twilio_gather' THEN crier_inbound_twilio_gather(tenants[i], p)
            WHEN 'sendgrid_event' THEN crier_inbound_sendgrid(tenants[i], p)
            ELSE 'ignored' END;
    END LOOP;
END $$;
