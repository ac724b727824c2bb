-- The quarantine, bounded: the writer keeps its newest RECEIVER_QUARANTINE_MAX_ROWS rows and
-- counts every refusal, kept or not, in quarantine_counts (one row per application, endpoint,
-- error and hour), in the transaction that stores it.

-- How many refusals a row stands for: 1, or more for a row that only counts refusals whose
-- bodies were not kept (over RECEIVER_QUARANTINE_BODIES_PER_SECOND, or the journal over half
-- full); such a row has an empty raw_body. body_bytes: the size of the refused body, of which
-- raw_body keeps at most the first 16 KiB.
ALTER TABLE quarantine
    ADD COLUMN occurrences integer NOT NULL DEFAULT 1,
    ADD COLUMN body_bytes integer;

CREATE TABLE quarantine_counts (
    application_id  integer REFERENCES applications (id),   -- NULL: the writer's own (endpoint 'writer')
    endpoint        text NOT NULL,
    error           text NOT NULL,
    hour            timestamptz NOT NULL,                     -- date_bin('1 hour', received_at), UTC
    refusals        bigint NOT NULL,
    first_at        timestamptz NOT NULL,
    last_at         timestamptz NOT NULL
);
CREATE UNIQUE INDEX quarantine_counts_key ON quarantine_counts ((coalesce(application_id, 0)), endpoint, error, hour);
CREATE INDEX quarantine_counts_hour ON quarantine_counts (hour);

INSERT INTO quarantine_counts (application_id, endpoint, error, hour, refusals, first_at, last_at)
SELECT application_id, endpoint, error, date_bin('1 hour', received_at, '2000-01-01 00:00:00+00'),
       count(*), min(received_at), max(received_at)
FROM quarantine
GROUP BY 1, 2, 3, 4;

-- Refused requests (and rejected batch items) per hour, application, endpoint and error: every
-- one of them, also those whose rows the bound has since removed from the quarantine table.
CREATE VIEW dashboard_quarantine AS
SELECT c.hour AS bucket, a.name AS application, c.endpoint, c.error, c.refusals, c.first_at, c.last_at
FROM quarantine_counts c LEFT JOIN applications a ON a.id = c.application_id;

GRANT SELECT ON quarantine_counts, dashboard_quarantine TO receiver_readonly;
