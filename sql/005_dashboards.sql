-- Views for dashboards (Grafana's PostgreSQL data source, psql, BI tools), and a read-only role.
-- Each view is bucketed on a stored, indexed hour column, so a time filter on "bucket" is an
-- index range scan even with tens of millions of reports. Times are UTC.

ALTER TABLE message_states
    ADD COLUMN sent_hour timestamptz GENERATED ALWAYS AS (date_bin('1 hour', sent_at, '2000-01-01 00:00:00+00')) STORED;
CREATE INDEX message_states_sent_hour ON message_states (sent_hour) INCLUDE (state, latency);

ALTER TABLE status_reports
    ADD COLUMN report_hour timestamptz
        GENERATED ALWAYS AS (date_bin('1 hour', coalesce(update_time, received_at), '2000-01-01 00:00:00+00')) STORED;
CREATE INDEX status_reports_report_hour ON status_reports (report_hour);

ALTER TABLE uplinks
    ADD COLUMN reply_hour timestamptz
        GENERATED ALWAYS AS (date_bin('1 hour', coalesce(create_time, received_at), '2000-01-01 00:00:00+00')) STORED;
CREATE INDEX uplinks_reply_hour ON uplinks (reply_hour);

-- Registered sends per hour sent, by what became of them.
CREATE VIEW dashboard_delivery_hourly AS
SELECT sent_hour AS bucket,
       count(*) AS sent,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'delivered')::float8 / count(*) AS delivery_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p99_seconds
FROM message_states
WHERE sent
GROUP BY sent_hour;

-- The same per day (a filter on bucket reads the hourly index range).
CREATE VIEW dashboard_delivery_daily AS
SELECT date_bin('1 day', sent_hour, '2000-01-01 00:00:00+00') AS bucket,
       count(*) AS sent,
       count(*) FILTER (WHERE state = 'delivered') AS delivered,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'pending') AS pending,
       count(*) FILTER (WHERE state = 'delivered')::float8 / count(*) AS delivery_rate,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p50_seconds,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p90_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM latency)) AS latency_p99_seconds
FROM message_states
WHERE sent
GROUP BY 1;

-- Reports that did not say DELIVRD, per hour, status code and source (1 SMS platform,
-- 2 SMS center, 3 Huawei platform: not billed).
CREATE VIEW dashboard_failures_hourly AS
SELECT report_hour AS bucket, status, coalesce(source, '?') AS source, count(*) AS reports
FROM status_reports
WHERE upper(status) <> 'DELIVRD'
GROUP BY report_hour, status, coalesce(source, '?');

-- Every report per hour and status (DELIVRD included), for status mixes.
CREATE VIEW dashboard_reports_hourly AS
SELECT report_hour AS bucket, status, count(*) AS reports
FROM status_reports
GROUP BY report_hour, status;

-- Replies per hour, and how many could be linked to the message they answer.
CREATE VIEW dashboard_replies_hourly AS
SELECT u.reply_hour AS bucket,
       count(*) AS replies,
       count(l.sms_msg_id) AS linked,
       count(*) FILTER (WHERE l.candidates > 1) AS ambiguous
FROM uplinks u LEFT JOIN reply_links l ON l.uplink_id = u.id
GROUP BY u.reply_hour;

-- A role for dashboards: reads the views and the event tables, changes nothing, and sees no
-- secret material (token and key hashes). Roles are cluster-wide: create it once.
DO $$
BEGIN
    CREATE ROLE receiver_readonly NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO receiver_readonly;
GRANT SELECT ON status_reports, uplinks, quarantine, sent_messages, message_states, reply_links,
    schema_migrations TO receiver_readonly;
GRANT SELECT (id, name, channels, created_at) ON applications TO receiver_readonly;
GRANT SELECT ON dashboard_delivery_hourly, dashboard_delivery_daily, dashboard_failures_hourly,
    dashboard_reports_hourly, dashboard_replies_hourly TO receiver_readonly;
