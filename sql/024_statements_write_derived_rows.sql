-- The rows that follow from a send, a report or a state (the event feed's, message_index's,
-- recipient_index's) are written by the service's statements that store them, in the same
-- statement; the triggers that wrote them stay for every other writer.
--
-- The tables they follow (status_reports, message_states, sent_messages, sends_after_optout) are
-- the ones a Citus cluster distributes by sms_msg_id (docs/storage.md, "Citus"). A trigger there
-- runs on the workers' shards, which have neither the statement's transition tables nor the
-- event feed (it stays on the coordinator: the feed needs one order of transactions). So the
-- service's statements write those rows themselves (receiver/writer.py,
-- receiver/correlation/store.py and sweep.py, receiver/blacklist/atsend.py, receiver/retention.py):
-- a data-modifying WITH that stores the rows and, from what it returns, the rows that follow.
--
-- A transaction whose statements do so says it first (receiver.derived_rows = 'statements',
-- transaction-local: receiver/db), and the triggers stand aside for it. Any other writer still
-- gets the rows from the triggers: a replica of an earlier release still running against this
-- database (a rolling upgrade), an operator's UPDATE. The steps that distribute the tables drop
-- the triggers (docs/storage.md).

-- The same triggers (sql/008, 014, 019), now only for a transaction that does not write the
-- rows itself: each made again with that condition.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('events_on_reports',                    'INSERT', 'status_reports',     'NEW TABLE AS new_rows',                    'events_on_reports'),
        ('events_on_new_states',                 'INSERT', 'message_states',     'NEW TABLE AS new_rows',                    'events_on_states'),
        ('events_on_changed_states',             'UPDATE', 'message_states',     'OLD TABLE AS old_rows NEW TABLE AS new_rows', 'events_on_states'),
        ('message_index_on_new_states',          'INSERT', 'message_states',     'NEW TABLE AS new_rows',                    'message_index_on_new_states'),
        ('message_index_on_changed_states',      'UPDATE', 'message_states',     'OLD TABLE AS old_rows NEW TABLE AS new_rows', 'message_index_on_changed_states'),
        ('message_index_on_deleted_states',      'DELETE', 'message_states',     'OLD TABLE AS old_rows',                    'message_index_on_deleted_states'),
        ('recipient_index_on_sends',             'INSERT', 'sent_messages',      'NEW TABLE AS new_rows',                    'recipient_index_on_sends'),
        ('events_on_new_sends_after_optout',     'INSERT', 'sends_after_optout', 'NEW TABLE AS new_rows',                    'events_on_sends_after_optout'),
        ('events_on_changed_sends_after_optout', 'UPDATE', 'sends_after_optout', 'OLD TABLE AS old_rows NEW TABLE AS new_rows', 'events_on_sends_after_optout')
    ) AS v(name, event, tab, transition, func) LOOP
        EXECUTE format('DROP TRIGGER %I ON %I', t.name, t.tab);
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %I REFERENCING %s FOR EACH STATEMENT '
                       'WHEN (current_setting(''receiver.derived_rows'', true) IS DISTINCT FROM ''statements'') '
                       'EXECUTE FUNCTION %I()', t.name, t.event, t.tab, t.transition, t.func);
    END LOOP;
END
$$;

-- Listeners of the feed are woken by the events themselves, whoever wrote them: one empty
-- NOTIFY per transaction that adds any (PostgreSQL collapses the same notification within a
-- transaction). The feed's table stays on one server, so a trigger of its own runs there.
CREATE FUNCTION events_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM new_rows) THEN
        PERFORM pg_notify('receiver_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_announce AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION events_announce();

-- As in sql/019_message_index.sql, but the default partition is checked with SELECT 1: Citus
-- refuses a select of no columns from a distributed table.
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

-- What a sent_after_optout event says (the dropped trigger's object, rendered in UTC as it did):
-- the send, and the entry that covered its recipient when it was sent (none: no longer found).
CREATE FUNCTION receiver_sent_after_optout_data(
    "from" text, sent_at timestamptz, "to" text, channel text, source text, reason text, cause_sms_msg_id text,
    added_by text, added_at timestamptz
) RETURNS jsonb LANGUAGE sql STABLE SET timezone = 'UTC' AS $$
    SELECT jsonb_build_object(
        'from', "from", 'sent_at', sent_at,
        'blacklisted_at_send', CASE WHEN source IS NOT NULL THEN jsonb_build_object(
            'number', "to", 'channel', channel, 'source', source, 'reason', reason,
            'sms_msg_id', cause_sms_msg_id, 'added_by', added_by, 'added_at', added_at) END)
$$;
