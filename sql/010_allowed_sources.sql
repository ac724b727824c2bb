-- Source allow-list per application: the networks its pushes may come from (the client address,
-- after trusted proxies: RECEIVER_TRUSTED_PROXIES). Empty: any source, as before. Not granted to
-- receiver_readonly (005 grants it chosen columns of applications only).

ALTER TABLE applications ADD COLUMN allowed_sources cidr[] NOT NULL DEFAULT '{}'
    CHECK (array_position(allowed_sources, NULL) IS NULL AND cardinality(allowed_sources) <= 100);
