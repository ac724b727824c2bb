-- The event feed reads a page of events after a cursor in the order of their transactions' txids;
-- `events` is partitioned by day of `at`. A day partition says nothing of where the events after a
-- cursor are while a transaction may still add to it, so a page used to read every day kept
-- (docs/storage.md, "The event feed's days"). Here a day is closed once no transaction can add to
-- it any more, and the txid it was closed at bounds every txid it holds: a page reads the days
-- still open and the closed days that may hold txids after its cursor, no others.
--
-- When no transaction can add to a day: an event's `at` is its transaction's start, but never more
-- than an hour before the row is written. A row written at clock time c lands in a day that ends
-- after c - 1 hour, so two hours after a day's end nothing can be written into it (an hour to spare
-- for the clock), and every transaction that wrote into it already had its txid. The partition job
-- (receiver_events_close, receiver.partitions) then records the day with a txid assigned after
-- all of them. Rows given an `at` of their own (not the default) are not covered: the service
-- never does it.
--
-- For a transaction shorter than an hour (every transaction of the service), `at` is its start as
-- before; a longer one's events carry the time they were written, less an hour.

ALTER TABLE events ALTER COLUMN at SET DEFAULT greatest(now(), clock_timestamp() - interval '1 hour');

-- A closed day partition of events: every event it holds has a txid below `below`. A row counts
-- only for the partition it was written for: the same table (oid) under the same name, attached
-- to events. Any other (a partition gone, an oid used again) is ignored, and deleted by the next
-- close.
CREATE TABLE events_closed_days (
    part   oid PRIMARY KEY,      -- the partition (pg_class)
    name   text NOT NULL,        -- its name (part::regclass::text) when closed
    lower  timestamptz NOT NULL, -- its lower bound ('-infinity': the table as it was before partitioning)
    below  xid8 NOT NULL,
    closed_at timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT ON events_closed_days TO receiver_readonly;

-- Records the day partitions of events that no transaction can add to any more (their end two
-- hours ago or more, and no later than `until` when given); forgets partitions no longer attached.
-- Returns the number recorded now.
CREATE FUNCTION receiver_events_close(until timestamptz DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql SET timezone = 'UTC' SET datestyle = 'ISO' AS $$
DECLARE
    closed integer;
BEGIN
    DELETE FROM events_closed_days d
    WHERE NOT EXISTS (SELECT FROM pg_inherits i
                      WHERE i.inhrelid = d.part AND i.inhparent = 'events'::regclass AND i.inhrelid::regclass::text = d.name);
    -- A txid after every transaction that wrote into them: this transaction's own, assigned now,
    -- is after every one assigned before; and after every one that has ended (xmax), should the
    -- caller's transaction have had its txid from before.
    INSERT INTO events_closed_days (part, name, lower, below)
    SELECT p.partition, p.partition::text, coalesce(p.lower_bound, '-infinity'),
           greatest(pg_current_xact_id(), pg_snapshot_xmax(pg_current_snapshot()))
    FROM receiver_partitions('events') p
    WHERE NOT p.is_default
      AND p.upper_bound <= least(now() - interval '2 hours', coalesce(until, 'infinity'))
      AND NOT EXISTS (SELECT FROM events_closed_days d WHERE d.part = p.partition)
    ON CONFLICT (part) DO NOTHING;  -- closed meanwhile by another writer
    GET DIAGNOSTICS closed = ROW_COUNT;
    RETURN closed;
END
$$;

-- The earliest `at` of an event whose txid is `first` or later: the lower bound of the earliest
-- day partition that is open or was closed after `first`, or the earliest such event in the
-- default partition (which takes rows outside every day: a day not made in time, a clock stepped
-- back), whichever is earlier; 'infinity' if none. A page of the feed after a cursor reads from there.
-- The bounds of the days still open are read here, not through receiver_partitions, which reads
-- every day's: 16 to 18 ms at 200 days, against under a millisecond.
CREATE FUNCTION receiver_events_from(first xid8) RETURNS timestamptz
LANGUAGE sql STABLE SET timezone = 'UTC' SET datestyle = 'ISO' AS $$
    SELECT least(
        (SELECT min(coalesce(d.lower,
                             (SELECT (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz
                              FROM pg_class c WHERE c.oid = i.inhrelid),
                             '-infinity'))
         FROM pg_inherits i
         LEFT JOIN events_closed_days d ON d.part = i.inhrelid AND d.name = i.inhrelid::regclass::text
         WHERE i.inhparent = 'events'::regclass
           AND i.inhrelid <> (SELECT partdefid FROM pg_partitioned_table WHERE partrelid = 'events'::regclass)
           AND (d.part IS NULL OR d.below > first)),
        (SELECT min(at) FROM events_default WHERE txid >= first),
        'infinity')
$$;

-- The days before this migration: every transaction that wrote into events has ended (this one
-- took the table's lock above), and from now on rows follow the rule above.
SELECT receiver_events_close();
