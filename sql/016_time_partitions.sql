-- The tables that grow with traffic are partitioned by time, one partition per UTC day
-- (docs/storage.md): status_reports and uplinks by received_at, quarantine by received_at, the
-- event feed (events) by at. Retention drops whole days (receiver prune); the service creates
-- the days ahead of time (receiver_partitions_ensure), and a default partition takes any row
-- whose day has none yet, so an insert never fails for want of a partition.
--
-- An existing table becomes the first partition of its new parent, "<table>_older", as it is (no
-- row moves): it holds everything before the first day boundary after its newest row, and goes
-- whole once that boundary is older than the retention cutoff (an empty table just goes). Its views, triggers and grants are made
-- again on the parent. The new keys are built on it once, here.
--
-- Keys. A unique key of a partitioned table must hold the partition column, and, for Citus,
-- the distribution column (sms_msg_id): status_reports (sms_msg_id, dedupe_key, received_at),
-- uplinks (sms_msg_id, application_id, received_at), quarantine (record_id, received_at). Such
-- a key only catches a copy with the same receipt time (a journal record stored twice); a
-- copy the platform pushed again is received later, possibly on the next day, and the writer
-- keeps it out itself: its insert skips what a recent partition already holds
-- (receiver.writer), under the messages' advisory locks.

-- Day partitions of one table, with the bounds of each in UTC, for receiver.partitions.
CREATE FUNCTION receiver_partitions(parent regclass)
RETURNS TABLE (partition regclass, lower_bound timestamptz, upper_bound timestamptz, is_default boolean)
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz,
           pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent
$$;

-- The partition of `parent` for the UTC day `day`, created if missing; true if created now.
-- Rows of that day the default partition took meanwhile move into it, in this transaction.
-- Concurrent callers wait for each other (an advisory lock per table); the caller may set
-- lock_timeout: a table busy with a long query is then left for the next round.
CREATE FUNCTION receiver_partition_create(parent regclass, day date) RETURNS boolean
LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    name text := format('%s_%s', parent::text, to_char(day, 'YYYYMMDD'));
    lo timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    key text;
    fallback regclass;
    crowded boolean := false;
    columns text;
BEGIN
    PERFORM pg_advisory_xact_lock(0x50415254, hashtext(parent::text));  -- "PART"
    IF EXISTS (SELECT FROM receiver_partitions(parent) p
               WHERE NOT p.is_default AND coalesce(p.lower_bound, '-infinity') < hi
                 AND coalesce(p.upper_bound, 'infinity') > lo) THEN
        RETURN false;  -- that day, or a part of it, has a partition already
    END IF;
    SELECT a.attname INTO key FROM pg_partitioned_table p
    JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
    WHERE p.partrelid = parent;
    SELECT p.partition INTO fallback FROM receiver_partitions(parent) p WHERE p.is_default;
    IF fallback IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT FROM %s WHERE %I >= $1 AND %I < $2)', fallback, key, key)
            INTO STRICT crowded USING lo, hi;
    END IF;
    IF NOT crowded THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)', name, parent, lo, hi);
        RETURN true;
    END IF;
    -- The default holds rows of that day: they move into a table made like the parent, which
    -- then becomes the partition (the parent's triggers do not fire: nothing is announced twice).
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns
    FROM pg_attribute WHERE attrelid = parent AND attnum > 0 AND NOT attisdropped AND attgenerated = '';
    EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)',
                   name, parent);
    EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= $1 AND %I < $2 RETURNING %s) '
                   'INSERT INTO %I (%s) SELECT %s FROM moved', fallback, key, key, columns, name, columns, columns)
        USING lo, hi;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, name, lo, hi);
    RETURN true;
END
$$;

-- Every partitioned table's day partitions from `first_day` to `last_day`; the number created.
CREATE FUNCTION receiver_partitions_ensure(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    parent regclass;
    day date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['status_reports', 'uplinks', 'quarantine', 'events']::regclass[] LOOP
        FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
            IF receiver_partition_create(parent, day) THEN
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- The conversion, table by table: pg_temp.partition_begin turns the table into "<table>_older"
-- (its views and triggers kept aside, its own keys dropped) and makes the partitioned parent
-- under the old name; the keys and indexes of the parent follow; pg_temp.partition_end
-- attaches the old table, makes the default partition and puts views, triggers and grants back.
CREATE TEMP TABLE kept_aside (seq serial, kind text, name text, sql text);

CREATE FUNCTION pg_temp.partition_begin(t text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r record;
    next_id bigint;
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
    -- Grants on the table itself, and its own triggers (the event feed's).
    INSERT INTO kept_aside (kind, name, sql)
    SELECT 'grant', t, format('GRANT %s ON %s TO %s', a.privilege_type, t, a.grantee::regrole)
    FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = t::regclass AND a.grantee <> 0 AND a.grantee <> c.relowner;
    FOR r IN SELECT tgname, pg_get_triggerdef(oid) AS def FROM pg_trigger WHERE tgrelid = t::regclass AND NOT tgisinternal LOOP
        INSERT INTO kept_aside (kind, name, sql) VALUES ('trigger', t, r.def);
        EXECUTE format('DROP TRIGGER %I ON %I', r.tgname, t);
    END LOOP;
    -- Its own keys and foreign keys go (the parent has its own); ids continue where they were.
    FOR r IN SELECT conname, conrelid::regclass::text AS rel FROM pg_constraint
             WHERE (conrelid = t::regclass AND contype IN ('p', 'u', 'f')) OR (confrelid = t::regclass AND contype = 'f')
             ORDER BY contype <> 'f'  -- the foreign keys on its keys first
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.rel, r.conname);
    END LOOP;
    -- A check added NOT VALID (every row satisfied it) is validated: a partition's checks are.
    FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = t::regclass AND contype = 'c' AND NOT convalidated LOOP
        EXECUTE format('ALTER TABLE %I VALIDATE CONSTRAINT %I', t, r.conname);
    END LOOP;
    EXECUTE format('SELECT coalesce(max(id), 0) + 1 FROM %I', t) INTO next_id;
    EXECUTE format('ALTER TABLE %I ALTER COLUMN id DROP IDENTITY', t);
    EXECUTE format('ALTER TABLE %I RENAME TO %I', t, t || '_older');
    FOR r IN SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = (t || '_older')::regclass LOOP
        IF r.name LIKE t || '\_%' THEN
            EXECUTE format('ALTER INDEX %I RENAME TO %I', r.name, t || '_older' || substr(r.name, length(t) + 1));
        END IF;
    END LOOP;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS '
                   'INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (%I)',
                   t, t || '_older', CASE t WHEN 'events' THEN 'at' ELSE 'received_at' END);
    EXECUTE format('ALTER TABLE %I ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (START WITH %s)', t, next_id);
END
$$;

CREATE FUNCTION pg_temp.partition_end(t text) RETURNS void LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    key text := CASE t WHEN 'events' THEN 'at' ELSE 'received_at' END;
    boundary date;
    r record;
BEGIN
    -- The old table keeps everything before the first day boundary after its newest row (an
    -- empty one, as in a new installation, goes).
    EXECUTE format('SELECT greatest(current_date, max(%I)::date) + 1 FROM %I HAVING count(*) > 0', key, t || '_older')
        INTO boundary;
    IF boundary IS NULL THEN
        EXECUTE format('DROP TABLE %I', t || '_older');
    ELSE
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       t, t || '_older', boundary::timestamp AT TIME ZONE 'UTC');
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', t || '_default', t);
    FOR r IN SELECT sql FROM kept_aside WHERE name = t OR kind IN ('view') ORDER BY seq LOOP
        EXECUTE r.sql;
    END LOOP;
    FOR r IN SELECT sql FROM kept_aside WHERE kind = 'grant' AND name <> t ORDER BY seq LOOP
        EXECUTE r.sql;
    END LOOP;
    DELETE FROM kept_aside;
END
$$;

-- status_reports
SELECT pg_temp.partition_begin('status_reports');
ALTER TABLE status_reports ADD FOREIGN KEY (application_id) REFERENCES applications (id);
ALTER TABLE status_reports ADD CONSTRAINT status_reports_key UNIQUE (sms_msg_id, dedupe_key, received_at);
CREATE INDEX status_reports_id ON status_reports (id);
CREATE INDEX status_reports_sms_msg_id ON status_reports (sms_msg_id);
CREATE INDEX status_reports_received_at ON status_reports (received_at);
CREATE INDEX status_reports_report_hour ON status_reports (report_hour);
SELECT pg_temp.partition_end('status_reports');

-- uplinks (reply_links keeps uplink ids without a foreign key: a day of uplinks goes with a
-- DROP, and receiver prune deletes their links in the same transaction)
SELECT pg_temp.partition_begin('uplinks');
ALTER TABLE uplinks ADD FOREIGN KEY (application_id) REFERENCES applications (id);
ALTER TABLE uplinks ADD CONSTRAINT uplinks_key UNIQUE (sms_msg_id, application_id, received_at);
CREATE INDEX uplinks_id ON uplinks (id);
CREATE INDEX uplinks_from ON uplinks ("from", received_at);
CREATE INDEX uplinks_received_at ON uplinks (received_at);
CREATE INDEX uplinks_reply ON uplinks (from_e164, "to");
CREATE INDEX uplinks_feed ON uplinks (txid, id);
CREATE INDEX uplinks_reply_hour ON uplinks (reply_hour);
SELECT pg_temp.partition_end('uplinks');

-- quarantine
SELECT pg_temp.partition_begin('quarantine');
ALTER TABLE quarantine ADD FOREIGN KEY (application_id) REFERENCES applications (id);
ALTER TABLE quarantine ADD CONSTRAINT quarantine_key UNIQUE (record_id, received_at);
CREATE INDEX quarantine_id ON quarantine (id);
CREATE INDEX quarantine_received_at ON quarantine (received_at);
SELECT pg_temp.partition_end('quarantine');

-- events: a report event also names its report's receipt time, so that the feed reads the
-- report from its one partition.
ALTER TABLE events ADD COLUMN report_received_at timestamptz;
UPDATE events e SET report_received_at = r.received_at FROM status_reports r WHERE r.id = e.report_id;
SELECT pg_temp.partition_begin('events');
ALTER TABLE events ADD PRIMARY KEY (txid, id, at);
CREATE INDEX events_at ON events USING brin (at);
SELECT pg_temp.partition_end('events');

CREATE OR REPLACE FUNCTION events_on_reports() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (kind, sms_msg_id, report_id, report_received_at)
    SELECT 'report', r.sms_msg_id, r.id, r.received_at FROM new_rows r ORDER BY r.id;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;

-- Yesterday to a week ahead, so that a fresh database takes events at once; the service keeps
-- a week ahead from then on.
SELECT receiver_partitions_ensure(current_date - 1, current_date + 7);
