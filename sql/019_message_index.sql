-- Where each message's state is: message_index maps sms_msg_id to its state's day (message_at),
-- the global index PostgreSQL does not give a partitioned table (docs/storage.md). A look-up that
-- knows only the id (GET /v1/messages/{id}) reads it first, then the state, send and opt-out of
-- that one day, instead of probing the index of every day kept.
--
-- It follows message_states by statement triggers, whatever writes the states (the state refresh,
-- a prune, an operator's UPDATE): a row where a state is made or moved to, none where a state was
-- deleted or moved from. It is partitioned by message_at as well, by UTC month, so that retention
-- still drops it whole (a month once its end is past the cutoff) while a look-up reads a few
-- months, not every day. A row whose state's day a prune dropped whole (no trigger fires) stays
-- until its month goes: it leads to no state, as an unknown id. Its key holds sms_msg_id and its
-- partition column, as every key here (Citus).

CREATE TABLE message_index (
    sms_msg_id text NOT NULL,
    message_at timestamptz NOT NULL,
    PRIMARY KEY (sms_msg_id, message_at)
) PARTITION BY RANGE (message_at);

CREATE TABLE message_index_default PARTITION OF message_index DEFAULT;

-- The days a recipient was sent to: recipient_index maps a number ("to") to each UTC day that has
-- a send to it, so that a recipient's messages (GET /v1/messages?to=) are read from those days
-- alone, not from the recipient index of every day kept. A trigger on sent_messages writes it (a
-- send is never moved or changed); partitioned by UTC month, as message_index. A day whose sends
-- a prune took away stays until its month goes: it lists no send.
CREATE TABLE recipient_index (
    "to" text NOT NULL,
    day timestamptz NOT NULL,  -- the UTC day's start
    PRIMARY KEY ("to", day)
) PARTITION BY RANGE (day);

CREATE TABLE recipient_index_default PARTITION OF recipient_index DEFAULT;

-- The partition of `parent` for the UTC day `day` (for the two indexes: its UTC month), created if
-- missing; true if created now. Rows the default partition took meanwhile move into it, in this
-- transaction. Concurrent callers wait for each other (an advisory lock per table); the caller
-- may set lock_timeout: a table busy with a long query is then left for the next round.
CREATE OR REPLACE FUNCTION receiver_partition_create(parent regclass, day date) RETURNS boolean
LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    monthly boolean := parent::text IN ('message_index', 'recipient_index');
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

CREATE OR REPLACE FUNCTION receiver_partitions_ensure(first_day date, last_day date) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer := 0;
    parent regclass;
    day date;
BEGIN
    FOREACH parent IN ARRAY ARRAY['status_reports', 'uplinks', 'quarantine', 'events', 'sent_messages',
                                  'message_states', 'sends_after_optout', 'message_index',
                                  'recipient_index']::regclass[] LOOP
        FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
            IF receiver_partition_create(parent, day) THEN
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

CREATE FUNCTION message_index_on_new_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_index (sms_msg_id, message_at)
    SELECT sms_msg_id, message_at FROM new_rows ORDER BY 1, 2
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

-- A state updated in place (nearly every update: its day does not change) changes nothing here.
CREATE FUNCTION message_index_on_changed_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_index i USING old_rows o
    WHERE i.sms_msg_id = o.sms_msg_id AND i.message_at = o.message_at
      AND NOT EXISTS (SELECT FROM new_rows n WHERE n.sms_msg_id = o.sms_msg_id AND n.message_at = o.message_at);
    INSERT INTO message_index (sms_msg_id, message_at)
    SELECT n.sms_msg_id, n.message_at FROM new_rows n
    WHERE NOT EXISTS (SELECT FROM old_rows o WHERE o.sms_msg_id = n.sms_msg_id AND o.message_at = n.message_at)
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION message_index_on_deleted_states() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_index i USING old_rows o WHERE i.sms_msg_id = o.sms_msg_id AND i.message_at = o.message_at;
    RETURN NULL;
END
$$;

CREATE TRIGGER message_index_on_new_states AFTER INSERT ON message_states
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION message_index_on_new_states();
CREATE TRIGGER message_index_on_changed_states AFTER UPDATE ON message_states
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION message_index_on_changed_states();
CREATE TRIGGER message_index_on_deleted_states AFTER DELETE ON message_states
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION message_index_on_deleted_states();

CREATE FUNCTION recipient_index_on_sends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO recipient_index ("to", day)
    SELECT DISTINCT "to", date_trunc('day', create_time, 'UTC') FROM new_rows ORDER BY 1, 2
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER recipient_index_on_sends AFTER INSERT ON sent_messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION recipient_index_on_sends();

-- The months of the states and sends stored, and the months ahead; then the rows of both.
SELECT receiver_partition_create('message_index', month::date)
FROM (SELECT DISTINCT date_trunc('month', message_at AT TIME ZONE 'UTC') AS month FROM message_states) AS m;
SELECT receiver_partition_create('recipient_index', month::date)
FROM (SELECT DISTINCT date_trunc('month', create_time AT TIME ZONE 'UTC') AS month FROM sent_messages) AS m;
SELECT receiver_partitions_ensure(current_date - 1, current_date + 7);
INSERT INTO message_index (sms_msg_id, message_at) SELECT sms_msg_id, message_at FROM message_states;
INSERT INTO recipient_index ("to", day)
SELECT DISTINCT "to", date_trunc('day', create_time, 'UTC') FROM sent_messages;

-- A state's send is the one at its sent_at, on the days of the statement's rows: the bounds are
-- values of the call, so its plan reads those days alone, not every day kept. Without a send among
-- the rows, an empty range (NULL bounds would leave the planner every day to look at).
CREATE OR REPLACE FUNCTION events_on_states() RETURNS trigger LANGUAGE plpgsql SET timezone = 'UTC' AS $$
DECLARE
    lo timestamptz;
    hi timestamptz;
BEGIN
    SELECT coalesce(min(sent_at), 'infinity'), coalesce(max(sent_at), '-infinity') INTO lo, hi FROM new_rows;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO events (kind, sms_msg_id, number, data)
        SELECT 'state', n.sms_msg_id, s."to",
               jsonb_build_object(
                   'state', n.state, 'previous', NULL, 'status', n.status,
                   'parts', jsonb_build_object('total', n.parts_total, 'delivered', n.parts_delivered),
                   'registered', n.sent, 'sent_at', n.sent_at, 'delivered_at', n.delivered_at,
                   'latency_seconds', extract(epoch FROM n.latency))
        FROM new_rows n
        LEFT JOIN sent_messages s ON s.sms_msg_id = n.sms_msg_id AND s.create_time = n.sent_at
                                 AND s.create_time BETWEEN lo AND hi
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
                                 AND s.create_time BETWEEN lo AND hi
        WHERE n.state IS DISTINCT FROM o.state
        ORDER BY n.sms_msg_id COLLATE "C";
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;

-- Each link names its reply's receipt time, so that a message's replies are read from their
-- days, not from the id index of every uplinks day. Filled in for the links there are (no event:
-- nothing a client sees changes).
ALTER TABLE reply_links ADD COLUMN uplink_received_at timestamptz;
ALTER TABLE reply_links DISABLE TRIGGER events_on_relinked_replies;
UPDATE reply_links l SET uplink_received_at = u.received_at FROM uplinks u WHERE u.id = l.uplink_id;
ALTER TABLE reply_links ENABLE TRIGGER events_on_relinked_replies;
