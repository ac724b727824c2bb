-- Messages the platform never reports on, and sends to numbers that had opted out
-- (docs/delivery-states.md).
--
-- unreported: a registered send with no delivered/failed state once its report window
-- (RECEIVER_REPORT_WINDOW after the send's createTime) has passed. The clock moves with no
-- event, so a periodic set-based sweep (receiver.correlation.sweep) moves such messages from
-- pending to unreported; a later report moves them on like any report (the state refresh keeps
-- unreported where the reports alone would say pending). Queries compute the state from the
-- clock as well, so they are right before the sweep has run.
--
-- The checks below replace narrower ones that every existing row satisfies: NOT VALID skips the
-- scan of tables that may hold millions of rows; new and updated rows are checked all the same.
ALTER TABLE message_states DROP CONSTRAINT message_states_state_check;
ALTER TABLE message_states ADD CONSTRAINT message_states_state_check
    CHECK (state IN ('pending', 'delivered', 'failed', 'unreported')) NOT VALID;

-- Sends whose recipient was blacklisted, in a scope covering the send's channel, at the send's
-- createTime: the fold of the number's blacklist_signals that happened at or before it
-- (receiver.blacklist.sendcheck). Derived, like message_states: rewritten for the sends of every
-- number whose signals change and for every send registered, so the order in which sends and
-- signals were recorded cannot change it. A send that no longer follows from the signals (a
-- re-subscribe dated before it arrived late) keeps its row with the entry's columns null, so that
-- the change is announced; the pruning of old messages deletes rows with their send.
CREATE TABLE sends_after_optout (
    sms_msg_id        text PRIMARY KEY,
    "to"              text NOT NULL,                -- the recipient, E.164
    "from"            text,                         -- the channel the send went from
    sent_at           timestamptz NOT NULL,         -- the send's createTime
    channel           text,                         -- the entry's scope: NULL every channel, else this one
    source            text CHECK (source IN ('keyword', 'platform', 'manual')),  -- NULL: no longer blacklisted
    reason            text,                         -- 'replied "T"', 'status SC:0016', or what the person wrote
    cause_sms_msg_id  text,                         -- the reply or reported message that blacklisted the number
    added_by          text,                         -- manual entries: who
    added_at          timestamptz,                  -- when the number was blacklisted (the entry's first cause)
    checked_at        timestamptz NOT NULL DEFAULT now(),
    sent_hour         timestamptz GENERATED ALWAYS AS (date_bin('1 hour', sent_at, '2000-01-01 00:00:00+00')) STORED,
    CHECK ((source IS NULL) = (reason IS NULL) AND (source IS NULL) = (added_at IS NULL))
);
-- GET /v1/messages?blacklisted_at_send=true pages through the findings in send order.
CREATE INDEX sends_after_optout_sent_at ON sends_after_optout (sent_at, sms_msg_id) WHERE source IS NOT NULL;
CREATE INDEX sends_after_optout_sent_hour ON sends_after_optout (sent_hour) WHERE source IS NOT NULL;

-- The event feed announces both (kinds listed in 008, plus sent_after_optout).
ALTER TABLE events DROP CONSTRAINT events_kind_check;
ALTER TABLE events ADD CONSTRAINT events_kind_check
    CHECK (kind IN ('report', 'state', 'reply', 'optout', 'optin', 'sent_after_optout')) NOT VALID;

-- A send found to have gone to a blacklisted number, and a change of that finding (another
-- entry, or none any more: blacklisted_at_send null). `number` is the recipient.
CREATE FUNCTION events_on_sends_after_optout() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    announced text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        announced := ARRAY(SELECT sms_msg_id FROM new_rows);
    ELSE
        announced := ARRAY(
            SELECT n.sms_msg_id FROM new_rows n JOIN old_rows o USING (sms_msg_id)
            WHERE (o.channel, o.source, o.reason, o.cause_sms_msg_id, o.added_by, o.added_at)
                  IS DISTINCT FROM (n.channel, n.source, n.reason, n.cause_sms_msg_id, n.added_by, n.added_at));
    END IF;
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT 'sent_after_optout', n.sms_msg_id, n."to",
           jsonb_build_object(
               'from', n."from", 'sent_at', n.sent_at,
               'blacklisted_at_send', CASE WHEN n.source IS NOT NULL THEN jsonb_build_object(
                   'number', n."to", 'channel', n.channel, 'source', n.source, 'reason', n.reason,
                   'sms_msg_id', n.cause_sms_msg_id, 'added_by', n.added_by, 'added_at', n.added_at) END)
    FROM new_rows n
    WHERE n.sms_msg_id = ANY(announced)
    ORDER BY n.sms_msg_id COLLATE "C";
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_on_new_sends_after_optout AFTER INSERT ON sends_after_optout
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_sends_after_optout();
CREATE TRIGGER events_on_changed_sends_after_optout AFTER UPDATE ON sends_after_optout
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_on_sends_after_optout();

-- Dashboards: unreported per hour sent (a column added at the end: the views' other columns stay
-- as they were). The views read the stored state, which the sweep brings up to date every
-- RECEIVER_SWEEP_INTERVAL_SECONDS: until then a message past its window counts as pending.
CREATE OR REPLACE VIEW dashboard_delivery_hourly AS
SELECT sent_hour AS bucket,
       count(*) AS sent,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'delivered')::float8 / count(*) AS delivery_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p99_seconds,
       count(*) FILTER (WHERE state = 'unreported') AS unreported
FROM message_states
WHERE sent
GROUP BY sent_hour;

CREATE OR REPLACE VIEW dashboard_delivery_daily AS
SELECT date_bin('1 day', sent_hour, '2000-01-01 00:00:00+00') AS bucket,
       count(*) AS sent,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'delivered')::float8 / count(*) AS delivery_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p99_seconds,
       count(*) FILTER (WHERE state = 'unreported') AS unreported
FROM message_states
WHERE sent
GROUP BY 1;

-- The list to work from: every send that went to a number blacklisted for it, bucketed by the
-- hour it was sent, with the entry that covered it.
CREATE VIEW dashboard_sends_after_optout AS
SELECT sent_hour AS bucket, sms_msg_id, "to", "from", sent_at,
       source, reason, channel AS entry_channel, added_at AS blacklisted_at, cause_sms_msg_id, added_by,
       sent_at - added_at AS after
FROM sends_after_optout
WHERE source IS NOT NULL;

GRANT SELECT ON sends_after_optout, dashboard_sends_after_optout TO receiver_readonly;
