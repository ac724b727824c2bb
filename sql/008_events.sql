-- The event feed for downstream services (GET /v1/events, and as Server-Sent Events).
--
-- One row per thing that happened, written by statement-level triggers in the very transaction
-- that stores it, so each is announced exactly once and only if it happened: a duplicate report
-- inserts no row and so no event; a state refresh that changes no state makes no event.
--
--   report   a status report stored (status_reports)
--   state    a message's derived state set for the first time or changed (message_states)
--   reply    an uplink stored, with the message it answers when known (reply_links: written for
--            every new uplink in the transaction that stores it), and again when that changes
--   optout   a blacklist entry added (blacklist_history, action 'add')
--   optin    a blacklist entry removed (blacklist_history, action 'remove')
--
-- Readers page by (txid, id) below pg_snapshot_xmin(pg_current_snapshot()), as for uplinks (003):
-- a transaction that commits after a later one sorts after any cursor handed out before it.
-- Every inserting transaction also sends an empty NOTIFY on receiver_events at commit (collapsed
-- to one per transaction); listeners then read the rows. No phone number goes into a
-- notification. Old rows go by time: `at` is indexed for pruning; prune them no later than the
-- status reports they point to (a report event whose report is gone reads with no data).

CREATE TABLE events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind        text NOT NULL CHECK (kind IN ('report', 'state', 'reply', 'optout', 'optin')),
    sms_msg_id  text,                   -- the message (report, state), the uplink's own id (reply), the cause (opt-*)
    number      text,                   -- E.164: the registered send's recipient, the replying number,
                                        -- the blacklisted one (not for reports: read with the report)
    report_id   bigint,                 -- report: the status_reports row (its data is read from there)
    data        jsonb,                  -- the others: what the kind says, as it was then (README, "Event feed")
    at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'report') = (report_id IS NOT NULL) AND (kind = 'report') = (data IS NULL)),
    PRIMARY KEY (txid, id)                  -- the feed's order; one B-tree per event keeps ingest cheap
);
-- `at` follows insertion order closely: a BRIN index finds old rows to prune at almost no cost
-- per insert.
CREATE INDEX events_at ON events USING brin (at);

-- A report: a reference only (reports come in thousands per second and never change): the
-- feed reads the report itself, and its number, when it is read.
CREATE FUNCTION events_on_reports() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (kind, sms_msg_id, report_id)
    SELECT 'report', r.sms_msg_id, r.id FROM new_rows r ORDER BY r.id;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_on_reports AFTER INSERT ON status_reports
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_reports();

-- A state: new rows, and updated rows whose state differs from before (a refresh rewrites every
-- message it is given; only real changes are events). `previous` is null for a first state.
CREATE FUNCTION events_on_states() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (kind, sms_msg_id, number, data)
        SELECT 'state', n.sms_msg_id, s."to",
               jsonb_build_object(
                   'state', n.state, 'previous', NULL, 'status', n.status,
                   'parts', jsonb_build_object('total', n.parts_total, 'delivered', n.parts_delivered),
                   'registered', n.sent, 'sent_at', n.sent_at, 'delivered_at', n.delivered_at,
                   'latency_seconds', extract(epoch FROM n.latency))
        FROM new_rows n LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id
        ORDER BY n.sms_msg_id COLLATE "C";
    ELSE
        INSERT INTO events (kind, sms_msg_id, number, data)
        SELECT 'state', n.sms_msg_id, s."to",
               jsonb_build_object(
                   'state', n.state, 'previous', o.state, 'status', n.status,
                   'parts', jsonb_build_object('total', n.parts_total, 'delivered', n.parts_delivered),
                   'registered', n.sent, 'sent_at', n.sent_at, 'delivered_at', n.delivered_at,
                   'latency_seconds', extract(epoch FROM n.latency))
        FROM new_rows n
        JOIN old_rows o ON o.sms_msg_id = n.sms_msg_id
        LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id
        WHERE n.state IS DISTINCT FROM o.state
        ORDER BY n.sms_msg_id COLLATE "C";
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_on_new_states AFTER INSERT ON message_states
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_states();
CREATE TRIGGER events_on_changed_states AFTER UPDATE ON message_states
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_states();

-- A reply, once linked (its reply_links row is inserted in the transaction that stores it), and
-- again when what the event says of the link changes (an UPDATE of reply_links): a reply that
-- came before its send was registered is announced with reply_to null, then with it set; likewise
-- when a later send becomes the one it answers, or when it turns ambiguous. A registration that
-- only adds an older candidate (the count changes, the answer and its ambiguity do not) announces
-- nothing. Shaped like an item of GET /v1/uplinks; `number` is the replying number in E.164.
CREATE FUNCTION events_on_replies() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    announced bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        announced := ARRAY(SELECT uplink_id FROM new_rows);
    ELSE
        announced := ARRAY(
            SELECT n.uplink_id FROM new_rows n JOIN old_rows o USING (uplink_id)
            WHERE n.sms_msg_id IS DISTINCT FROM o.sms_msg_id OR (n.candidates > 1) <> (o.candidates > 1));
    END IF;
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT 'reply', u.sms_msg_id, u.from_e164,
           jsonb_build_object(
               'from', u."from", 'to', u."to", 'body', u.body, 'create_time', u.create_time,
               'received_at', u.received_at, 'application', a.name, 'reply_to', l.sms_msg_id,
               'ambiguous', l.candidates > 1)
    FROM reply_links l
    JOIN uplinks u ON u.id = l.uplink_id
    JOIN applications a ON a.id = u.application_id
    WHERE l.uplink_id = ANY(announced)
    ORDER BY u.id;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_on_replies AFTER INSERT ON reply_links
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_replies();
CREATE TRIGGER events_on_relinked_replies AFTER UPDATE ON reply_links
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_replies();

-- Opt-outs and opt-ins: every add and remove of a blacklist entry, whoever made it.
CREATE FUNCTION events_on_blacklist() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
BEGIN
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT CASE h.action WHEN 'add' THEN 'optout' ELSE 'optin' END, h.sms_msg_id, h.number,
           jsonb_build_object('channel', h.channel, 'source', h.source, 'actor', h.actor, 'reason', h.reason)
    FROM new_rows h
    ORDER BY h.id;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_on_blacklist AFTER INSERT ON blacklist_history
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_blacklist();

GRANT SELECT ON events TO receiver_readonly;
