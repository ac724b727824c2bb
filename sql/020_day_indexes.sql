-- Fewer index bytes a day (docs/storage.md, "The indexes of a day"). Every day partition holds
-- one copy of each index of its table, and retention's drop of a day empties all of their files:
-- an index no statement needs costs each stored row its insert, and each dropped day its bytes.
-- An index made or dropped on the partitioned parent is made or dropped on every partition (the
-- days, the default, the table as it was before partitioning), and every partition made later
-- (receiver_partition_create) gets the parent's set.
--
-- What goes, and what serves its statements instead:

-- status_reports (sms_msg_id): the unique key (sms_msg_id, dedupe_key, received_at) starts with
-- the same column and answers every look-up by sms_msg_id (the writer's copies, the state
-- refresh, a message's reports, a prune's check of a message, the blacklist codes of a late send).
DROP INDEX status_reports_sms_msg_id;

-- sent_messages ("from", "to", create_time): no statement reads sends by channel first; linking a
-- reply reads the replying number's sends by ("to", create_time, sms_msg_id).
DROP INDEX sent_messages_channel_to;

-- message_states (sent_at) and (state, sent_at): a state settles (delivered, failed) within
-- minutes and stays so, and every statement that reads states by sent_at reads unsettled ones or
-- unsent ones alone: the sweep and the stuck-pending gauge the pending and unreported states (by
-- state, then sent_at), a prune the states without a send (sent_at IS NULL) of the days before its
-- cutoff. Two partial indexes hold those rows alone (a few a day where sends are registered)
-- instead of one per message.
DROP INDEX message_states_sent_at;
DROP INDEX message_states_state_sent_at;
CREATE INDEX message_states_unsettled ON message_states (state, sent_at) WHERE state IN ('pending', 'unreported');
CREATE INDEX message_states_unsent ON message_states (message_at) WHERE sent_at IS NULL;

-- message_states (sent_hour) INCLUDE (state, latency): the delivery dashboards also read `sent`,
-- so they read the rows anyway, and an index with INCLUDE columns keeps a key per row; without
-- them the entries of an hour share one key (B-tree deduplication).
DROP INDEX message_states_sent_hour;
CREATE INDEX message_states_sent_hour ON message_states (sent_hour);

-- uplinks ("from", received_at): no statement reads replies by their number as sent; linking
-- reads them by from_e164 (uplinks_reply).
DROP INDEX uplinks_from;

-- Kept as they are: status_reports (id), uplinks (id): point look-ups (the event feed's report,
-- a reply by id), where a BRIN would read a whole block range. (received_at) of status_reports,
-- uplinks and quarantine: a prune walks the day that straddles its cutoff in received_at order,
-- a batch at a time, which a BRIN cannot give (each batch would read and sort the rest of the
-- day). status_reports (report_hour), uplinks (reply_hour): the platform's times (updateTime,
-- createTime), not the order rows are stored in (a report pushed again days later, an SMS
-- center's clock), so a BRIN's block ranges would each span days; their B-trees are small (an
-- hour's entries share a key).
