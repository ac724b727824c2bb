-- Opt-outs on the dashboards, and the blacklist readable by the receiver_readonly role.

ALTER TABLE blacklist_signals
    ADD COLUMN hour timestamptz GENERATED ALWAYS AS (date_bin('1 hour', at, '2000-01-01 00:00:00+00')) STORED;
CREATE INDEX blacklist_signals_hour ON blacklist_signals (hour);

-- What happened per hour: unsubscribe replies, platform blacklist codes, re-subscribe replies,
-- and support staff's manual adds and removes (every signal is one event; duplicates are not
-- signals twice).
CREATE VIEW dashboard_optouts_hourly AS
SELECT hour AS bucket,
       count(*) FILTER (WHERE source = 'keyword' AND action = 'add') AS unsubscribed_by_reply,
       count(*) FILTER (WHERE source = 'platform') AS blacklisted_by_platform,
       count(*) FILTER (WHERE source = 'keyword' AND action = 'remove') AS resubscribed_by_reply,
       count(*) FILTER (WHERE source = 'manual' AND action = 'add') AS added_by_staff,
       count(*) FILTER (WHERE source = 'manual' AND action = 'remove') AS removed_by_staff
FROM blacklist_signals
GROUP BY hour;

GRANT SELECT ON blacklist, blacklist_history, blacklist_signals, dashboard_optouts_hourly TO receiver_readonly;
