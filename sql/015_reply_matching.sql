-- Reply matching beyond the documented channel rule (docs/replies.md).
--
-- Recipients see a 106-prefixed number (channel plus extension digits the carrier assigns), not
-- the csms... channel number a send answers with, and replies may come to either. A reply is
-- linked by the first rule that finds a candidate, strongest first:
--
--   channel       a send from the number replied to (uplink "to" = the send's "from")
--   reply_number  a send of the application whose reply number is the longest prefix of the
--                 number replied to
--   application   a send of the application whose uplink URL the reply came to, inside the
--                 report window (RECEIVER_REPORT_WINDOW) before the reply
--   number        a send that belongs to no application, inside the report window
--
-- always a send to the replying number at or before the reply; within the rule, the latest.
-- A send belongs to the application it was registered with (an API key scoped to it, or the
-- `application` field of POST /v1/sent); registered without one, to the application that lists
-- its "from" among its channels, if any.

-- The numbers an application's recipients reply to; a reply to a number that starts with one of
-- them (carriers append extension digits) belongs to that application. One application per number.
CREATE TABLE reply_numbers (
    number          text COLLATE "C" PRIMARY KEY CHECK (number ~ '^[0-9]{4,21}$'),
    application_id  integer NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    added_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reply_numbers_application ON reply_numbers (application_id);

-- The application a send was registered for; NULL: registered without one.
ALTER TABLE sent_messages ADD COLUMN application_id integer REFERENCES applications (id);

-- An API key scoped to one application: the sends it registers belong to it.
ALTER TABLE api_keys ADD COLUMN application_id integer REFERENCES applications (id) ON DELETE CASCADE;

-- How each link was made. match: the rule that found it (NULL: none did); candidates: how many
-- sends that rule had to choose from; unlinked_reason, when none did:
--   invalid_number     the replying number is no phone number
--   no_send            no registered send to the replying number at or before the reply
--   outside_window     only sends older than the report window could answer it
--   other_application  only sends of other applications went to the replying number
ALTER TABLE reply_links
    ADD COLUMN match text CHECK (match IN ('channel', 'reply_number', 'application', 'number')),
    ADD COLUMN unlinked_reason text
        CHECK (unlinked_reason IN ('invalid_number', 'no_send', 'outside_window', 'other_application'));

-- Existing links were made by the channel rule. Existing unlinked replies keep no link here;
-- `receiver relink` tries the other rules on them.
ALTER TABLE reply_links DISABLE TRIGGER events_on_relinked_replies;
UPDATE reply_links SET match = 'channel' WHERE sms_msg_id IS NOT NULL;
UPDATE reply_links l SET unlinked_reason = CASE WHEN u.from_e164 IS NULL THEN 'invalid_number' ELSE 'no_send' END
FROM uplinks u WHERE u.id = l.uplink_id AND l.sms_msg_id IS NULL;
ALTER TABLE reply_links ENABLE TRIGGER events_on_relinked_replies;
ALTER TABLE reply_links ADD CONSTRAINT reply_links_match_or_reason
    CHECK ((sms_msg_id IS NULL) = (match IS NULL) AND (match IS NULL) = (unlinked_reason IS NOT NULL));

-- The reply event says how its link was made. Announced again when the message it answers, its
-- ambiguity, the rule or the reason changes; `candidates` is the count when it was announced.
CREATE OR REPLACE FUNCTION events_on_replies() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    announced bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        announced := ARRAY(SELECT uplink_id FROM new_rows);
    ELSE
        announced := ARRAY(
            SELECT n.uplink_id FROM new_rows n JOIN old_rows o USING (uplink_id)
            WHERE n.sms_msg_id IS DISTINCT FROM o.sms_msg_id OR (n.candidates > 1) <> (o.candidates > 1)
               OR n.match IS DISTINCT FROM o.match OR n.unlinked_reason IS DISTINCT FROM o.unlinked_reason);
    END IF;
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT 'reply', u.sms_msg_id, u.from_e164,
           jsonb_build_object(
               'from', u."from", 'to', u."to", 'body', u.body, 'create_time', u.create_time,
               'received_at', u.received_at, 'application', a.name, 'reply_to', l.sms_msg_id,
               'ambiguous', l.candidates > 1, 'match', l.match, 'candidates', l.candidates,
               'unlinked_reason', l.unlinked_reason)
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

-- Replies per hour by how they were linked: match is the rule, or 'unlinked' (then
-- unlinked_reason says why); ambiguous: linked replies whose rule had more than one candidate.
CREATE VIEW dashboard_reply_matches_hourly AS
SELECT u.reply_hour AS bucket,
       coalesce(l.match, 'unlinked') AS match,
       l.unlinked_reason,
       count(*) AS replies,
       count(*) FILTER (WHERE l.candidates > 1) AS ambiguous
FROM uplinks u JOIN reply_links l ON l.uplink_id = u.id
GROUP BY u.reply_hour, coalesce(l.match, 'unlinked'), l.unlinked_reason;

GRANT SELECT ON reply_numbers, dashboard_reply_matches_hourly TO receiver_readonly;
