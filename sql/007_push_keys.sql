-- Push keys: the AK/SK pairs the platform signs an application's pushes with (SDK-HMAC-SHA256).
-- Verifying an HMAC needs the secret itself, so secret_key is stored as given: whoever can read
-- this table can forge pushes for its applications. No role but the owner may read it; in
-- particular receiver_readonly is not granted it. Two slots per application, as Huawei
-- recommends for rotation (both pairs are accepted while the console switches from one to the
-- other).

CREATE TABLE push_keys (
    application_id  integer NOT NULL REFERENCES applications (id) ON DELETE CASCADE,
    slot            smallint NOT NULL CHECK (slot IN (1, 2)),
    access_key      text NOT NULL CHECK (access_key <> '' AND access_key !~ '[,[:space:]]'),
    secret_key      text NOT NULL CHECK (secret_key <> ''),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (application_id, slot),
    UNIQUE (application_id, access_key)
);
REVOKE ALL ON push_keys FROM PUBLIC;
