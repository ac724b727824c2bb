-- Sent messages (registered by the senders through POST /v1/sent), the delivery state derived
-- from their reports, and the link from each reply to the message it answers.

CREATE TABLE sent_messages (
    sms_msg_id     text PRIMARY KEY,
    "to"           text NOT NULL,              -- the recipient, E.164 when it parses (originTo)
    "from"         text,                       -- the channel number the message went from
    status         text NOT NULL,              -- the send API's per-recipient code: 000000 accepted
    create_time    timestamptz NOT NULL,       -- when the platform took the send request (else: registration)
    country_id     text,
    total          smallint NOT NULL DEFAULT 1 CHECK (total >= 1),
    extend         text,
    template_id    text,
    signature      text,
    message_type   text CHECK (message_type IN ('verification', 'notification', 'promotional')),
    raw            jsonb NOT NULL,             -- this recipient's item of the send response, as sent
    registered_by  text,                       -- the API key's name
    registered_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sent_messages_to ON sent_messages ("to", create_time, sms_msg_id);
CREATE INDEX sent_messages_channel_to ON sent_messages ("from", "to", create_time);
CREATE INDEX sent_messages_create_time ON sent_messages (create_time, sms_msg_id);

-- One row per message that has a send or a report: derived, rebuilt from the events for the
-- messages each transaction touches, so arrival order and duplicates cannot change it.
CREATE TABLE message_states (
    sms_msg_id       text PRIMARY KEY,
    state            text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    status           text,                     -- the latest raw report status
    parts_total      smallint NOT NULL,
    parts_delivered  smallint NOT NULL,
    reports          integer NOT NULL,
    sent             boolean NOT NULL,         -- the send is registered
    sent_at          timestamptz,
    delivered_at     timestamptz,              -- when the last part was delivered (report updateTime)
    latency          interval,                 -- delivered_at - the send's createTime
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_states_state_sent_at ON message_states (state, sent_at);
CREATE INDEX message_states_sent_at ON message_states (sent_at);

-- The message each reply answers: the latest message sent from the channel it came to, to the
-- number it came from, before it. candidates > 1 means that rule had to choose (ambiguous).
CREATE TABLE reply_links (
    uplink_id    bigint PRIMARY KEY REFERENCES uplinks (id) ON DELETE CASCADE,
    sms_msg_id   text,                         -- the sent message answered; NULL: none found (yet)
    candidates   integer NOT NULL,
    ambiguous    boolean GENERATED ALWAYS AS (candidates > 1) STORED,
    linked_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reply_links_sms_msg_id ON reply_links (sms_msg_id);

-- The replying number in E.164 (uplinks are Chinese-mainland only), to match sent_messages."to".
ALTER TABLE uplinks ADD COLUMN from_e164 text;
CREATE INDEX uplinks_reply ON uplinks (from_e164, "to");

-- The inserting transaction, for feeds that never skip a row: a reader pages by (txid, id) and
-- sees only transactions older than every one still running (pg_snapshot_xmin), so a row that
-- commits later always sorts after the reader's cursor.
ALTER TABLE uplinks ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX uplinks_feed ON uplinks (txid, id);
