-- Each worker keeps the blacklist's numbers in memory for POST /v1/blacklist/check
-- (receiver/blacklist/mirror.py). Every statement that changes the table tells them which
-- numbers to read again, at commit: NOTIFY receiver_blacklist, '+8613912345678,+8615...'; when
-- the list would not fit a notification (imports, rebuilds) or the table is truncated, '*':
-- read it all again.
CREATE FUNCTION blacklist_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    numbers text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('receiver_blacklist', '*');
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT string_agg(DISTINCT number, ',') INTO numbers FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT string_agg(DISTINCT number, ',') INTO numbers FROM old_rows;
    ELSE
        SELECT string_agg(DISTINCT number, ',') INTO numbers
        FROM (SELECT number FROM new_rows UNION SELECT number FROM old_rows) AS changed;
    END IF;
    IF numbers IS NOT NULL THEN
        PERFORM pg_notify('receiver_blacklist', CASE WHEN length(numbers) > 7000 THEN '*' ELSE numbers END);
    END IF;
    RETURN NULL;
END
$$;

-- A trigger with transition tables fires on one event only: one trigger per event, one function.
CREATE TRIGGER blacklist_notify_insert AFTER INSERT ON blacklist
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION blacklist_notify();
CREATE TRIGGER blacklist_notify_update AFTER UPDATE ON blacklist
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION blacklist_notify();
CREATE TRIGGER blacklist_notify_delete AFTER DELETE ON blacklist
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION blacklist_notify();
CREATE TRIGGER blacklist_notify_truncate AFTER TRUNCATE ON blacklist
    FOR EACH STATEMENT EXECUTE FUNCTION blacklist_notify();
-- Fire for every session, also under session_replication_role = replica (logical replication's
-- apply, some restores): a change the workers' copies never heard of would leave them wrong.
-- The copies check for ALWAYS; a trigger disabled or enabled otherwise (pg_restore
-- --disable-triggers enables them again as ordinary triggers) stops them from answering.
ALTER TABLE blacklist ENABLE ALWAYS TRIGGER blacklist_notify_insert;
ALTER TABLE blacklist ENABLE ALWAYS TRIGGER blacklist_notify_update;
ALTER TABLE blacklist ENABLE ALWAYS TRIGGER blacklist_notify_delete;
ALTER TABLE blacklist ENABLE ALWAYS TRIGGER blacklist_notify_truncate;
