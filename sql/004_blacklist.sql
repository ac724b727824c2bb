-- Recipients who must get no more SMS: what senders check before sending (GET /v1/blacklist/...).
--
-- blacklist_signals holds every fact that bears on it (an unsubscribe or re-subscribe reply, a
-- report with a platform blacklist code, a person adding or removing a number); blacklist is
-- their fold, per number, in the order they happened (receiver/blacklist/rules.py), rewritten
-- for the numbers each transaction touches. blacklist_history keeps every add and remove.

CREATE TABLE blacklist (
    number      text COLLATE "C" NOT NULL,      -- E.164
    channel     text,                           -- NULL: every channel; else only sends from this channel number
    source      text NOT NULL CHECK (source IN ('keyword', 'platform', 'manual')),
    reason      text NOT NULL,                  -- 'replied "T"', 'status SC:0016', or what the person wrote
    sms_msg_id  text,                           -- the event that caused it: the reply's id, or the reported message's
    added_by    text,                           -- manual entries: who (API key name, or the CLI's --by)
    added_at    timestamptz NOT NULL            -- when the cause happened (reply or report received; manual: when done)
);
-- One entry per number, channel and source. Deliberately not an index that starts with number:
-- look-ups by number go through the hash index, about twice as fast for 500 numbers at once.
CREATE UNIQUE INDEX blacklist_key ON blacklist (source, (coalesce(channel, '')), number);
CREATE INDEX blacklist_number ON blacklist USING hash (number);

CREATE TABLE blacklist_signals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number      text COLLATE "C" NOT NULL,      -- E.164
    action      text NOT NULL CHECK (action IN ('add', 'remove')),
    source      text NOT NULL CHECK (source IN ('keyword', 'platform', 'manual')),
    channel     text,                           -- keyword: the channel replied to; platform: the send's channel
                                                -- when known; manual: the scope given (NULL: every channel)
    reason      text NOT NULL,
    sms_msg_id  text,
    actor       text,                           -- manual: who
    uplink_id   bigint UNIQUE,                  -- the reply it comes from (keyword)
    report_id   bigint UNIQUE,                  -- the status report it comes from (platform)
    at          timestamptz NOT NULL,           -- when it happened: what the fold orders by
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((source = 'keyword') = (uplink_id IS NOT NULL)),
    CHECK ((source = 'platform') = (report_id IS NOT NULL AND action = 'add'))
);
CREATE INDEX blacklist_signals_number ON blacklist_signals (number, at);

CREATE TABLE blacklist_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number      text NOT NULL,
    channel     text,
    source      text NOT NULL,                  -- the entry's source
    action      text NOT NULL CHECK (action IN ('add', 'remove')),
    actor       text NOT NULL,                  -- a person or API key; 'recipient', 'platform', 'rebuild'
    reason      text NOT NULL,                  -- add: the entry's reason; remove: why it went
    sms_msg_id  text,                           -- the event behind the change
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX blacklist_history_number ON blacklist_history (number, at);
CREATE INDEX blacklist_history_at ON blacklist_history (at);
