-- Applications, the three callbacks' events, and the quarantine of refused requests.

CREATE TABLE applications (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    token_hash  bytea NOT NULL UNIQUE,          -- sha256 of the secret token; the token itself is never stored
    channels    text[] NOT NULL DEFAULT '{}',   -- channel numbers (the send's "from"), informative
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per distinct report. A report pushed twice has the same dedupe_key and is stored once.
CREATE TABLE status_reports (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    application_id  integer NOT NULL REFERENCES applications (id),
    sms_msg_id      text NOT NULL,
    status          text NOT NULL,              -- open string, stored raw (DELIVRD, E200027, SC:0016, ...)
    total           smallint,
    sequence        smallint,
    status_desc     text,
    source          text,                       -- 1 SMS platform, 2 SMS center, 3 Huawei platform
    update_time     timestamptz,                -- absent on reports the platform builds itself
    extend          text,
    "to"            text,
    org_code        text,
    extra           jsonb NOT NULL DEFAULT '{}', -- fields the reference does not name, kept as sent
    raw_body        text NOT NULL,              -- the form body, or this item's JSON for a batch
    via             text NOT NULL CHECK (via IN ('form', 'batch')),
    received_at     timestamptz NOT NULL,       -- when the request reached us
    stored_at       timestamptz NOT NULL DEFAULT now(),
    dedupe_key      bytea NOT NULL UNIQUE
);
CREATE INDEX status_reports_sms_msg_id ON status_reports (sms_msg_id);
CREATE INDEX status_reports_received_at ON status_reports (received_at);

CREATE TABLE uplinks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    application_id  integer NOT NULL REFERENCES applications (id),
    sms_msg_id      text NOT NULL,              -- the uplink's own id, not a downlink id
    "from"          text NOT NULL,              -- the recipient who replied
    "to"            text NOT NULL,              -- the channel number replied to
    body            text NOT NULL,
    create_time     timestamptz,
    extra           jsonb NOT NULL DEFAULT '{}',
    raw_body        text NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (application_id, sms_msg_id)
);
CREATE INDEX uplinks_from ON uplinks ("from", received_at);
CREATE INDEX uplinks_received_at ON uplinks (received_at);

-- Requests refused with a 4xx, kept for forensics. raw_body is bytes: it may not even be UTF-8.
CREATE TABLE quarantine (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id       uuid NOT NULL UNIQUE,       -- makes a replay of the journal idempotent
    application_id  integer REFERENCES applications (id),
    endpoint        text NOT NULL,
    error           text NOT NULL,
    detail          jsonb,
    content_type    text,
    raw_body        bytea NOT NULL,
    received_at     timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quarantine_received_at ON quarantine (received_at);
