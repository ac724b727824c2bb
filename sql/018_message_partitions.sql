-- The tables of one row per message are partitioned by UTC day as well (docs/storage.md), so that
-- retention drops their old days whole: sent_messages by the send's create_time,
-- sends_after_optout by sent_at (the same createTime), message_states by message_at.
--
-- message_at is the message's time: the send's createTime when the send is registered, else the
-- receipt time of its first report. Like the rest of a state, it follows from the set of the
-- message's events, whatever their order: the state refresh (receiver.correlation.store) sets it,
-- and moves the row to another day when a send registered late, or an earlier report, changes it.
-- A report comes within 72 hours of its send, so a message's state lies within a few days of
-- each of its events: that is where every look-up by sms_msg_id with a time searches.
--
-- Keys. A unique key of a partitioned table must hold the partition column: (sms_msg_id,
-- create_time), (sms_msg_id, message_at), (sms_msg_id, sent_at). That sms_msg_id stays unique
-- across days is kept by the statements that write them, under the messages' advisory locks:
-- a send is registered unless one with its id is stored within a few days of its createTime,
-- a state is updated where it is and inserted only when none is found near.
--
-- An existing table becomes the first partition of its new parent, "<table>_older", as 016 did
-- for the event tables (no row moves; the new keys are built on it once, views, triggers and
-- grants made again on the parent). message_at is filled in first for existing states.

ALTER TABLE message_states ADD COLUMN message_at timestamptz;
UPDATE message_states SET message_at = coalesce(sent_at, reports_from, updated_at);
ALTER TABLE message_states ALTER COLUMN message_at SET NOT NULL;

CREATE OR REPLACE FUNCTION receiver_partitions_ensure(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    parent regclass;
    day date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['status_reports', 'uplinks', 'quarantine', 'events', 'sent_messages',
                                  'message_states', 'sends_after_optout']::regclass[] LOOP
        FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
            IF receiver_partition_create(parent, day) THEN
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- The conversion, table by table (016's, for tables without an id column and with any partition
-- column): pg_temp.partition_table keeps the table's views, triggers, grants and plain indexes
-- aside, drops its keys, renames it "<table>_older", makes the partitioned parent under the old
-- name with the given primary key and the same indexes, attaches the old table (or drops it when
-- empty), makes the default partition and puts the rest back.
CREATE TEMP TABLE IF NOT EXISTS kept_aside (seq serial, kind text, name text, sql text);  -- 016 may have made it in this session

CREATE FUNCTION pg_temp.partition_table(t text, key text, primary_key text) RETURNS void
LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    r record;
    boundary date;
BEGIN
    -- Views reading the table, deepest last: dropped now, made again from their definitions.
    FOR r IN
        WITH RECURSIVE deps(oid, depth) AS (
            SELECT DISTINCT v.oid, 1 FROM pg_depend d
            JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class
            WHERE d.refobjid = t::regclass AND v.oid <> t::regclass AND v.relkind = 'v'
            UNION
            SELECT v.oid, deps.depth + 1 FROM deps JOIN pg_depend d ON d.refobjid = deps.oid
            JOIN pg_rewrite w ON w.oid = d.objid JOIN pg_class v ON v.oid = w.ev_class
            WHERE v.oid <> deps.oid AND v.relkind = 'v'
        )
        SELECT c.oid::regclass::text AS name, max(depth) AS depth, pg_get_viewdef(c.oid) AS def, c.relacl
        FROM deps JOIN pg_class c ON c.oid = deps.oid GROUP BY c.oid ORDER BY 2
    LOOP
        INSERT INTO kept_aside (kind, name, sql) VALUES ('view', r.name, format('CREATE VIEW %s AS %s', r.name, r.def));
        INSERT INTO kept_aside (kind, name, sql)
        SELECT 'grant', r.name, format('GRANT %s ON %s TO %s', a.privilege_type, r.name, a.grantee::regrole)
        FROM aclexplode(r.relacl) a WHERE a.grantee <> 0;
    END LOOP;
    FOR r IN SELECT name FROM kept_aside WHERE kind = 'view' ORDER BY seq DESC LOOP
        EXECUTE format('DROP VIEW IF EXISTS %s', r.name);
    END LOOP;
    INSERT INTO kept_aside (kind, name, sql)
    SELECT 'grant', t, format('GRANT %s ON %s TO %s', a.privilege_type, t, a.grantee::regrole)
    FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = t::regclass AND a.grantee <> 0 AND a.grantee <> c.relowner;
    FOR r IN SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE tgrelid = t::regclass AND NOT tgisinternal LOOP
        INSERT INTO kept_aside (kind, name, sql) VALUES ('trigger', t, r.def);
        EXECUTE format('DROP TRIGGER %I ON %I', r.tgname, t);
    END LOOP;
    -- Plain indexes, made again on the parent under their names (attaching the old table takes
    -- its own, renamed, as their partitions).
    INSERT INTO kept_aside (kind, name, sql)
    SELECT 'index', t, pg_get_indexdef(i.indexrelid) FROM pg_index i
    WHERE i.indrelid = t::regclass AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid);
    FOR r IN SELECT conname, conrelid::regclass::text AS rel FROM pg_constraint
             WHERE (conrelid = t::regclass AND contype IN ('p', 'u')) OR (confrelid = t::regclass AND contype = 'f')
             ORDER BY contype <> 'f'
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.rel, r.conname);
    END LOOP;
    -- Foreign keys of the table itself are made again on the parent.
    FOR r IN SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
             WHERE conrelid = t::regclass AND contype = 'f'
    LOOP
        INSERT INTO kept_aside (kind, name, sql) VALUES ('key', t, format('ALTER TABLE %I ADD %s', t, r.def));
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', t, r.conname);
    END LOOP;
    FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = t::regclass AND contype = 'c' AND NOT convalidated LOOP
        EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', t, r.conname);
    END LOOP;
    EXECUTE format('ALTER TABLE %I RENAME TO %I', t, t || '_older');
    FOR r IN SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = (t || '_older')::regclass LOOP
        IF r.name LIKE t || '\_%' THEN
            EXECUTE format('ALTER INDEX %I RENAME TO %I', r.name, t || '_older' || substr(r.name, length(t) + 1));
        END IF;
    END LOOP;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (%I)', t, t || '_older', key);
    EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (%s)', t, primary_key);
    FOR r IN SELECT sql FROM kept_aside WHERE name = t AND kind IN ('index', 'key') ORDER BY seq LOOP
        EXECUTE r.sql;
    END LOOP;
    -- The old table keeps everything before the first day boundary after its newest row.
    EXECUTE format('SELECT greatest(current_date, max(%I)::date) + 1 FROM %I HAVING count(*) > 0', key, t || '_older')
        INTO boundary;
    IF boundary IS NULL THEN
        EXECUTE format('DROP TABLE %I', t || '_older');
    ELSE
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       t, t || '_older', boundary::timestamp AT TIME ZONE 'UTC');
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', t || '_default', t);
    FOR r IN SELECT sql FROM kept_aside WHERE (name = t AND kind = 'trigger') OR kind = 'view' ORDER BY seq LOOP
        EXECUTE r.sql;
    END LOOP;
    FOR r IN SELECT sql FROM kept_aside WHERE kind = 'grant' ORDER BY seq LOOP
        EXECUTE r.sql;
    END LOOP;
    DELETE FROM kept_aside;
END
$$;

SELECT pg_temp.partition_table('sent_messages', 'create_time', 'sms_msg_id, create_time');
SELECT pg_temp.partition_table('message_states', 'message_at', 'sms_msg_id, message_at');
SELECT pg_temp.partition_table('sends_after_optout', 'sent_at', 'sms_msg_id, sent_at');

-- A state's send is the one at its sent_at: one day partition, not every day kept.
CREATE OR REPLACE FUNCTION events_on_states() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (kind, sms_msg_id, number, data)
        SELECT 'state', n.sms_msg_id, s."to",
               jsonb_build_object(
                   'state', n.state, 'previous', NULL, 'status', n.status,
                   'parts', jsonb_build_object('total', n.parts_total, 'delivered', n.parts_delivered),
                   'registered', n.sent, 'sent_at', n.sent_at, 'delivered_at', n.delivered_at,
                   'latency_seconds', extract(epoch FROM n.latency))
        FROM new_rows n LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id AND s.create_time = n.sent_at
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
        LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id AND s.create_time = n.sent_at
        WHERE n.state IS DISTINCT FROM o.state
        ORDER BY n.sms_msg_id COLLATE "C";
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;

SELECT receiver_partitions_ensure(current_date - 1, current_date + 7);
