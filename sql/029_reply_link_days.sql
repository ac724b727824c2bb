-- reply_links is partitioned by UTC day like the replies it links (docs/storage.md): a link lies
-- in the day its reply was received on (uplink_received_at), so retention takes a day's links
-- away with the day's replies, whole, instead of deleting them row by row from one table of
-- every link kept (the longest part of a prune's locks once the links number millions), and a
-- look-up that knows the reply's time reads one day.
--
-- Key. A unique key of a partitioned table holds its partition column: (uplink_id,
-- uplink_received_at). A link is written with its reply's receipt time (receiver.correlation.links),
-- and moves with its reply when other SQL changes that (a trigger of uplinks, below), so the key
-- still keeps one link a reply. An older release's writer, whose statement names the key
-- without the time, cannot store replies from here on: its journal keeps them for this one's.
--
-- The existing table becomes the first partition of its new parent, "reply_links_older", as 016
-- and 018 did for the others (no row moves; the key is built on it once, its triggers, views
-- and grants made again on the parent).

-- Every link names its reply's time and hour (the dashboards' bucket, uplinks.reply_hour: the
-- replies' dashboards count the links by it, below): links written before 019, or by other SQL,
-- take the time from their reply; a link left without one (its reply gone: no foreign key since
-- 016) goes.
ALTER TABLE reply_links ADD COLUMN reply_hour timestamptz;
ALTER TABLE reply_links DISABLE TRIGGER events_on_relinked_replies;  -- nothing a client sees changes
UPDATE reply_links l SET uplink_received_at = u.received_at, reply_hour = u.reply_hour
FROM uplinks u WHERE u.id = l.uplink_id;
ALTER TABLE reply_links ENABLE TRIGGER events_on_relinked_replies;
DELETE FROM reply_links WHERE uplink_received_at IS NULL OR reply_hour IS NULL;
ALTER TABLE reply_links ALTER COLUMN uplink_received_at SET NOT NULL, ALTER COLUMN reply_hour SET NOT NULL;

-- The conversion, as 018 did it for the tables of one row per message (018's pg_temp function,
-- made again: a function of pg_temp lasts a session): the views reading the table, its
-- triggers, grants and plain indexes kept aside, its key dropped, the table renamed
-- "reply_links_older", the partitioned parent made under the old name with the new key and the
-- same indexes, the old table attached (or dropped when empty), the default partition made,
-- the rest put back.
CREATE TEMP TABLE IF NOT EXISTS kept_aside (seq serial, kind text, name text, sql text);  -- an earlier migration may have made it in this session

CREATE OR REPLACE FUNCTION pg_temp.partition_table(t text, key text, primary_key text) RETURNS void
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


SELECT pg_temp.partition_table('reply_links', 'uplink_received_at', 'uplink_id, uplink_received_at');
-- A day of replies dropped whole takes the links of its dates from wherever they are (the default
-- partition, the table as it was): a range of this index (receiver.retention).
CREATE INDEX reply_links_uplink_received_at ON reply_links (uplink_received_at);
CREATE INDEX reply_links_reply_hour ON reply_links (reply_hour);

-- A reply moved to another time (by another writer's SQL: the service never changes a reply's
-- receipt time or createTime) takes its link along to its new day and hour, so that a link
-- always lies on its reply's day and counts in its reply's hour.
CREATE FUNCTION reply_links_follow_replies() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE reply_links l SET uplink_received_at = n.received_at, reply_hour = n.reply_hour
    FROM old_rows o JOIN new_rows n USING (id)
    WHERE l.uplink_id = o.id AND l.uplink_received_at = o.received_at
      AND (n.received_at, n.reply_hour) IS DISTINCT FROM (o.received_at, o.reply_hour);
    RETURN NULL;
END
$$;
CREATE TRIGGER reply_links_follow_replies AFTER UPDATE ON uplinks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reply_links_follow_replies();

-- The replies' dashboards count the links of an hour from reply_links itself, by the hour of
-- their replies (reply_hour, as uplinks' is; a link lies on its reply's day and hour): an index
-- range of each, as the replies are counted, instead of a look-up of each reply's link.
CREATE OR REPLACE VIEW dashboard_replies_hourly AS
SELECT bucket, sum(replies)::bigint AS replies, sum(linked)::bigint AS linked, sum(ambiguous)::bigint AS ambiguous
FROM (SELECT reply_hour AS bucket, count(*) AS replies, 0 AS linked, 0 AS ambiguous FROM uplinks GROUP BY reply_hour
      UNION ALL
      SELECT reply_hour, 0, count(sms_msg_id), count(*) FILTER (WHERE candidates > 1) FROM reply_links GROUP BY reply_hour
     ) AS counted
GROUP BY bucket;

CREATE OR REPLACE VIEW dashboard_reply_matches_hourly AS
SELECT reply_hour AS bucket, coalesce(match, 'unlinked') AS match, unlinked_reason,
       count(*) AS replies, count(*) FILTER (WHERE candidates > 1) AS ambiguous
FROM reply_links
GROUP BY reply_hour, coalesce(match, 'unlinked'), unlinked_reason;


-- The days a message's replies are on: reply_index maps a message (sms_msg_id) to each UTC day on
-- which a reply linked to it was received, so that its replies (GET /v1/messages/{id}) are read
-- from those days of reply_links, not from every day after its send. A trigger of reply_links
-- writes it (reply_links stays on one server, with Citus too: docs/storage.md); partitioned by
-- UTC month, as message_index and recipient_index (a look-up by id reads a few months). A link
-- relinked to another message leaves its former day behind: it lists no link of that message.
CREATE TABLE reply_index (
    sms_msg_id text NOT NULL,
    day timestamptz NOT NULL,  -- the UTC day's start
    PRIMARY KEY (sms_msg_id, day)
) PARTITION BY RANGE (day);

CREATE TABLE reply_index_default PARTITION OF reply_index DEFAULT;

-- The partition of `parent` for the UTC day `day` (for the three indexes: its UTC month), created
-- if missing; as 024 made it, with reply_index among the monthly tables.
CREATE OR REPLACE FUNCTION receiver_partition_create(parent regclass, day date) RETURNS boolean
LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    monthly boolean := parent::text IN ('message_index', 'recipient_index', 'reply_index');
    start_day date := CASE WHEN monthly THEN date_trunc('month', day)::date ELSE day END;
    name text := format('%s_%s', parent::text, to_char(start_day, CASE WHEN monthly THEN 'YYYYMM' ELSE 'YYYYMMDD' END));
    lo timestamptz := start_day::timestamp AT TIME ZONE 'UTC';
    hi timestamptz := (start_day + CASE WHEN monthly THEN interval '1 month' ELSE interval '1 day' END)::timestamp
                      AT TIME ZONE 'UTC';
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
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I >= $1 AND %I < $2)', fallback, key, key)
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

CREATE FUNCTION reply_index_on_links() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO reply_index (sms_msg_id, day)
    SELECT DISTINCT sms_msg_id, date_trunc('day', uplink_received_at, 'UTC') FROM new_rows
    WHERE sms_msg_id IS NOT NULL ORDER BY 1, 2
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER reply_index_on_new_links AFTER INSERT ON reply_links
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reply_index_on_links();
CREATE TRIGGER reply_index_on_changed_links AFTER UPDATE ON reply_links
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reply_index_on_links();

GRANT SELECT ON reply_index TO receiver_readonly;

-- The days ahead are made for it too (receiver.partitions makes them; this is the same in SQL).
CREATE OR REPLACE FUNCTION receiver_partitions_ensure(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    parent regclass;
    day date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['status_reports', 'uplinks', 'reply_links', 'quarantine', 'events',
                                  'sent_messages', 'message_states', 'sends_after_optout', 'message_index',
                                  'recipient_index', 'reply_index']::regclass[] LOOP
        FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
            IF receiver_partition_create(parent, day) THEN
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- The months of the links stored, the days and months ahead; then the days of the links.
SELECT receiver_partition_create('reply_index', month::date)
FROM (SELECT DISTINCT date_trunc('month', uplink_received_at AT TIME ZONE 'UTC') AS month FROM reply_links) AS m;
SELECT receiver_partitions_ensure(current_date - 1, current_date + 7);
INSERT INTO reply_index (sms_msg_id, day)
SELECT DISTINCT sms_msg_id, date_trunc('day', uplink_received_at, 'UTC') FROM reply_links WHERE sms_msg_id IS NOT NULL;

-- A reply's event reads its link from the days the links announced name (028 read the links by
-- id from every day of reply_links); the replies as 028 did.
CREATE OR REPLACE FUNCTION events_on_replies() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    announced bigint[];
    replies jsonb;
    first_link timestamptz;
    last_link timestamptz;
    lo timestamptz;
    hi timestamptz;
BEGIN
    IF TG_OP = 'INSERT' THEN
        announced := ARRAY(SELECT uplink_id FROM new_rows);
    ELSE
        announced := ARRAY(
            SELECT n.uplink_id FROM new_rows n JOIN old_rows o USING (uplink_id)
            WHERE n.sms_msg_id IS DISTINCT FROM o.sms_msg_id OR (n.candidates > 1) <> (o.candidates > 1)
               OR n.match IS DISTINCT FROM o.match OR n.unlinked_reason IS DISTINCT FROM o.unlinked_reason);
    END IF;
    IF cardinality(announced) = 0 THEN
        RETURN NULL;
    END IF;
    SELECT min(uplink_received_at), max(uplink_received_at) INTO first_link, last_link
    FROM new_rows WHERE uplink_id = ANY(announced);
    lo := first_link;
    hi := last_link;
    FOR pass IN 1..2 LOOP
        SELECT jsonb_agg(jsonb_build_object(
                   'sms_msg_id', u.sms_msg_id, 'number', u.from_e164,
                   'data', jsonb_build_object(
                       'from', u."from", 'to', u."to", 'body', u.body, 'create_time', u.create_time,
                       'received_at', u.received_at, 'application', a.name, 'reply_to', l.sms_msg_id,
                       'ambiguous', l.candidates > 1, 'match', l.match, 'candidates', l.candidates,
                       'unlinked_reason', l.unlinked_reason)) ORDER BY u.id)
        INTO replies
        FROM reply_links l
        JOIN uplinks u ON u.id = l.uplink_id
        JOIN applications a ON a.id = u.application_id
        WHERE l.uplink_id = ANY(announced) AND l.uplink_received_at BETWEEN first_link AND last_link
          AND u.received_at BETWEEN lo AND hi;
        EXIT WHEN coalesce(jsonb_array_length(replies), 0) = cardinality(announced);
        lo := '-infinity';  -- a reply not on the day its link names (other SQL moved it): every day
        hi := 'infinity';
    END LOOP;
    INSERT INTO events (kind, sms_msg_id, number, data)
    SELECT 'reply', r ->> 'sms_msg_id', r ->> 'number', r -> 'data'
    FROM jsonb_array_elements(coalesce(replies, '[]')) WITH ORDINALITY AS x(r, n)
    ORDER BY n;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
