-- A reply's event is read from the day its reply was received on. Each link names its reply's
-- receipt time (uplink_received_at, sql/019_message_index.sql), so the trigger that writes the
-- replies' events reads uplinks between the earliest and the latest of those times, not the id
-- index of every day kept. A link whose time is not its reply's (written by another writer, or
-- the reply moved to another day since) is read again over every day: the events are the same,
-- in the same order, as sql/026_reply_events_read_then_written.sql wrote them.
CREATE OR REPLACE FUNCTION events_on_replies() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    announced bigint[];
    replies jsonb;
    lo timestamptz;
    hi timestamptz;
BEGIN
    IF TG_OP = 'INSERT' THEN
        announced := ARRAY(SELECT uplink_id FROM new_rows);
    ELSE
        announced := ARRAY(
            SELECT n.uplink_id FROM new_rows n JOIN old_rows o USING (uplink_id)
            WHERE n.sms_msg_id IS DISTINCT FROM o.sms_msg_id OR (n.candidates > 1) <> (o.candidates > 1)
               OR n.match IS DISTINCT FROM o.match OR n.unlinked_reason IS DISTINCT FROM o.unlinked_reason);
    END IF;
    IF cardinality(announced) = 0 THEN
        RETURN NULL;
    END IF;
    SELECT coalesce(min(uplink_received_at), '-infinity'), coalesce(max(uplink_received_at), 'infinity')
    INTO lo, hi
    FROM new_rows WHERE uplink_id = ANY(announced);
    FOR pass IN 1..2 LOOP
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
        WHERE l.uplink_id = ANY(announced) AND u.received_at BETWEEN lo AND hi;
        EXIT WHEN coalesce(jsonb_array_length(replies), 0) = cardinality(announced);
        lo := '-infinity';  -- a reply not on the days its link names: every day
        hi := 'infinity';
    END LOOP;
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
