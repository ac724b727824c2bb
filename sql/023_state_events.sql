-- A state event keeps its fields in columns of its own instead of a JSON object each.
--
-- State events are most of the event feed's rows (two a message: registered, settled), and the
-- JSON object spelled out every key and timestamp again: 253 bytes of 365 a row, against about
-- 60 in columns. The feed builds the same object when it reads the row
-- (receiver_state_event_data, below: the same expression, the same UTC rendering), so what a
-- client reads does not change. Rows written before keep their JSON and are read as they are.

ALTER TABLE events
    ADD COLUMN state           text,
    ADD COLUMN previous        text,
    ADD COLUMN status          text,
    ADD COLUMN parts_total     integer,
    ADD COLUMN parts_delivered integer,
    ADD COLUMN registered      boolean,
    ADD COLUMN sent_at         timestamptz,
    ADD COLUMN delivered_at    timestamptz,
    ADD COLUMN latency         interval;

-- A report names its report and carries nothing else; a state event carries its JSON (written
-- before this migration) or its columns, not both; the others carry their JSON. NOT VALID: the
-- rows there are were written under the check this replaces (which they meet), and checking
-- them again would hold the table for as long as it takes to read every day kept;
-- `ALTER TABLE events VALIDATE CONSTRAINT events_fields` does it without stopping writes.
ALTER TABLE events DROP CONSTRAINT events_check;
ALTER TABLE events ADD CONSTRAINT events_fields CHECK (
    (kind = 'report') = (report_id IS NOT NULL)
    AND CASE kind WHEN 'report' THEN data IS NULL AND state IS NULL
                  WHEN 'state' THEN (data IS NULL) <> (state IS NULL)
                  ELSE data IS NOT NULL AND state IS NULL END
) NOT VALID;

-- What a state event says, as the feed shows it: the object the trigger used to store.
CREATE FUNCTION receiver_state_event_data(
    state text, previous text, status text, parts_total integer, parts_delivered integer, registered boolean,
    sent_at timestamptz, delivered_at timestamptz, latency interval
) RETURNS jsonb LANGUAGE sql STABLE SET timezone = 'UTC' AS $$
    SELECT jsonb_build_object(
        'state', state, 'previous', previous, 'status', status,
        'parts', jsonb_build_object('total', parts_total, 'delivered', parts_delivered),
        'registered', registered, 'sent_at', sent_at, 'delivered_at', delivered_at,
        'latency_seconds', extract(epoch FROM latency))
$$;

CREATE OR REPLACE FUNCTION events_on_states() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    SELECT coalesce(min(sent_at), 'infinity'), coalesce(max(sent_at), '-infinity') INTO lo, hi FROM new_rows;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (kind, sms_msg_id, number, state, previous, status, parts_total, parts_delivered,
                            registered, sent_at, delivered_at, latency)
        SELECT 'state', n.sms_msg_id, s."to", n.state, NULL, n.status, n.parts_total, n.parts_delivered,
               n.sent, n.sent_at, n.delivered_at, n.latency
        FROM new_rows n
        LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id AND s.create_time = n.sent_at
                                 AND s.create_time BETWEEN lo AND hi
        ORDER BY n.sms_msg_id COLLATE "C";
    ELSE
        INSERT INTO events (kind, sms_msg_id, number, state, previous, status, parts_total, parts_delivered,
                            registered, sent_at, delivered_at, latency)
        SELECT 'state', n.sms_msg_id, s."to", n.state, o.state, n.status, n.parts_total, n.parts_delivered,
               n.sent, n.sent_at, n.delivered_at, n.latency
        FROM new_rows n
        JOIN old_rows o ON o.sms_msg_id = n.sms_msg_id
        LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id AND s.create_time = n.sent_at
                                 AND s.create_time BETWEEN lo AND hi
        WHERE n.state IS DISTINCT FROM o.state
        ORDER BY n.sms_msg_id COLLATE "C";
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
