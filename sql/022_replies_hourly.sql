-- dashboard_replies_hourly joined the hours' replies to reply_links, which is not partitioned
-- and holds a row for every reply kept. PostgreSQL chose between looking each reply's link up by
-- its key and hashing the whole of reply_links; once the links of the days kept outnumbered a
-- day's replies enough, it hashed them all, and a day's dashboard grew with the history (35.7 ms
-- p50 at 50 M stored reports, 3.1 at 1 M: docs/storage.md). A lateral look-up with LIMIT 1 (the
-- key is unique, so it is the same row) is never turned into a join over the whole table: a
-- reply's link is found by reply_links' key, and the view costs what the hours' replies cost.
CREATE OR REPLACE VIEW dashboard_replies_hourly AS
SELECT u.reply_hour AS bucket,
       count(*) AS replies,
       count(l.sms_msg_id) AS linked,
       count(*) FILTER (WHERE l.candidates > 1) AS ambiguous
FROM uplinks u
LEFT JOIN LATERAL (SELECT sms_msg_id, candidates FROM reply_links WHERE uplink_id = u.id LIMIT 1) l ON true
GROUP BY u.reply_hour;
