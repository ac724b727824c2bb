-- A reply's event is written by the trigger on reply_links (sql/015_reply_matching.sql), from
-- the reply's row in uplinks. On Citus uplinks is distributed (docs/storage.md, "Citus"), and an
-- INSERT ... SELECT that reads a distributed table has the inserted table's defaults evaluated
-- where the SELECT runs: on the workers. The event then took a worker's txid, not its own
-- transaction's, and the feed, which pages by txid, held it back or passed it by.
--
-- So the trigger reads the replies first and writes their events in a statement of its own, on
-- the node of its transaction. The events are the same, in the same order.
CREATE OR REPLACE FUNCTION events_on_replies() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    announced bigint[];
    replies jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        announced := ARRAY(SELECT uplink_id FROM new_rows);
    ELSE
        announced := ARRAY(
            SELECT n.uplink_id FROM new_rows n JOIN old_rows o USING (uplink_id)
            WHERE n.sms_msg_id IS DISTINCT FROM o.sms_msg_id OR (n.candidates > 1) <> (o.candidates > 1)
               OR n.match IS DISTINCT FROM o.match OR n.unlinked_reason IS DISTINCT FROM o.unlinked_reason);
    END IF;
    SELECT jsonb_agg(jsonb_build_object(
               'sms_msg_id', u.sms_msg_id, 'number', u.from_e164,
               'data', jsonb_build_object(
                   'from', u."from", 'to', u."to", 'body', u.body, 'create_time', u.create_time,
                   'received_at', u.received_at, 'application', a.name, 'reply_to', l.sms_msg_id,
                   'ambiguous', l.candidates > 1, 'match', l.match, 'candidates', l.candidates,
                   'unlinked_reason', l.unlinked_reason)) ORDER BY u.id)
    INTO replies
    FROM reply_links l
    JOIN uplinks u ON u.id = l.uplink_id
    JOIN applications a ON a.id = u.application_id
    WHERE l.uplink_id = ANY(announced);
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT 'reply', r ->> 'sms_msg_id', r ->> 'number', r -> 'data'
    FROM jsonb_array_elements(coalesce(replies, '[]')) WITH ORDINALITY AS x(r, n)
    ORDER BY n;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
