-- The replies' listing (GET /v1/uplinks) pages by transaction, (txid, id), and uplinks is
-- partitioned by the day a reply was received: a page looked in every day kept for the
-- transactions after its cursor, one index descent a day. A reply's received_at is a worker's
-- clock at receipt, and a journal replayed after an outage stores replies into past days, so a
-- day cannot be closed by the clock as the event feed's are (sql/025_event_feed_closed_days.sql).
--
-- So each day of receipt keeps the newest transaction that stored a reply of it: a page reads the
-- days written at or after its cursor's transaction (receiver/correlation/queries.py), in the
-- same snapshot as the replies themselves. A reply of a transaction in that snapshot has its
-- day's row there too, at its txid or later: written by the same transaction, by the writer from
-- the rows its insert returned, as its last statement (receiver/writer.py: a day's row stays
-- locked only while it commits), or, for any other writer, by the trigger below
-- (sql/024_statements_write_derived_rows.sql).
CREATE TABLE uplink_days (
    day        timestamptz PRIMARY KEY,  -- the start of a UTC day of received_at
    last_txid  xid8 NOT NULL             -- the newest transaction that stored a reply received that day
);
GRANT SELECT ON uplink_days TO receiver_readonly;

INSERT INTO uplink_days (day, last_txid)
SELECT date_trunc('day', received_at, 'UTC'), max(txid) FROM uplinks GROUP BY 1;

-- Rows in the order of their key: concurrent writers lock the same days in one order.
CREATE FUNCTION uplink_days_on_uplinks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO uplink_days AS d (day, last_txid)
    SELECT date_trunc('day', received_at, 'UTC'), max(txid) FROM new_rows GROUP BY 1 ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET last_txid = greatest(d.last_txid, excluded.last_txid);
    RETURN NULL;
END
$$;
CREATE TRIGGER uplink_days_on_uplinks AFTER INSERT ON uplinks REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (current_setting('receiver.derived_rows', true) IS DISTINCT FROM 'statements')
    EXECUTE FUNCTION uplink_days_on_uplinks();
-- A reply moved to another day (an operator's UPDATE of received_at) keeps its txid: its new day
-- is counted at that txid, so a page at or before it still reads the day.
CREATE TRIGGER uplink_days_on_moved_uplinks AFTER UPDATE ON uplinks REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT
    WHEN (current_setting('receiver.derived_rows', true) IS DISTINCT FROM 'statements')
    EXECUTE FUNCTION uplink_days_on_uplinks();
