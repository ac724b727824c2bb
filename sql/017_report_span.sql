-- Where a message's reports are: the first and last receipt time of its stored reports, kept by
-- the state refresh (receiver.correlation.store). status_reports is partitioned by receipt day
-- (016), so reading a message's reports by sms_msg_id alone would search every day kept; with
-- these bounds the refresh and GET /v1/messages/{id} read only the days between them.
-- NULL with reports > 0: a state from before these columns; its reports are searched everywhere.
ALTER TABLE message_states
    ADD COLUMN reports_from timestamptz,
    ADD COLUMN reports_until timestamptz;
