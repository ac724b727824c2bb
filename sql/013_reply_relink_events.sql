-- A reply is announced again when what its event says of the link changes: a reply that arrived
-- before its send was registered is announced with reply_to null, and once the send is
-- registered and the reply linked to it (an UPDATE of reply_links) with reply_to set; likewise
-- when a later send becomes the one it answers, or when it turns ambiguous. A registration
-- that only adds an older candidate (the count changes, the answer and its ambiguity do not)
-- announces nothing. Consumers keep the latest event per reply (its sms_msg_id).
--
-- One function writes reply events for both triggers (008's, on insert, now calls it too).
CREATE FUNCTION announce_replies(uplink_ids bigint[]) RETURNS void LANGUAGE plpgsql SET timezone = 'UTC' AS $$
BEGIN
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT 'reply', u.sms_msg_id, u.from_e164,
           jsonb_build_object(
               'from', u."from", 'to', u."to", 'body', u.body, 'create_time', u.create_time,
               'received_at', u.received_at, 'application', a.name, 'reply_to', l.sms_msg_id,
               'ambiguous', l.candidates > 1)
    FROM reply_links l
    JOIN uplinks u ON u.id = l.uplink_id
    JOIN applications a ON a.id = u.application_id
    WHERE l.uplink_id = ANY(uplink_ids)
    ORDER BY u.id;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION events_on_replies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM announce_replies(ARRAY(SELECT uplink_id FROM new_rows));
    RETURN NULL;
END
$$;

CREATE FUNCTION events_on_relinked_replies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM announce_replies(ARRAY(
        SELECT n.uplink_id FROM new_rows n JOIN old_rows o USING (uplink_id)
        WHERE n.sms_msg_id IS DISTINCT FROM o.sms_msg_id OR (n.candidates > 1) <> (o.candidates > 1)));
    RETURN NULL;
END
$$;
CREATE TRIGGER events_on_relinked_replies AFTER UPDATE ON reply_links
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_on_relinked_replies();
